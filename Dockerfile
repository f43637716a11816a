# syntax=docker/dockerfile:1
# Build stage: resolve and build wheels once, with the pinned constraints.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY memory ./memory
COPY db ./db
COPY migrations ./migrations
RUN python -m venv /opt/voxmem \
 && /opt/voxmem/bin/pip install --upgrade pip \
 && /opt/voxmem/bin/pip install -c constraints.txt .

# Runtime stage: no compiler, no sources beyond the installed package, non-root.
FROM python:3.11-slim-bookworm
RUN groupadd --system voxmem && useradd --system --gid voxmem --home /srv/voxmem voxmem \
 && mkdir -p /srv/voxmem/data && chown -R voxmem:voxmem /srv/voxmem
COPY --from=build /opt/voxmem /opt/voxmem
ENV PATH=/opt/voxmem/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VOXMEM_DATA_DIR=/srv/voxmem/data \
    VOXMEM_DATABASE_URL=sqlite:////srv/voxmem/data/voxmem.db \
    VOXMEM_HOST=0.0.0.0
WORKDIR /srv/voxmem
USER voxmem
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2).status == 200 else 1)"
CMD ["voxmem", "serve", "--host", "0.0.0.0", "--port", "8000"]
