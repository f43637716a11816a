#!/bin/sh
# Consistent online backup of the voxmem database (seed 001 phase 6), e.g. from cron:
#   15 3 * * *  cd /srv/voxmem && ./backup.sh /var/backups/voxmem
# Retention (VOXMEM_BACKUP_RETENTION_DAYS, default 30) and the optional upload command
# (VOXMEM_BACKUP_UPLOAD_COMMAND, e.g. "aws s3 cp {file} s3://bucket/voxmem/") come from the
# same settings as the service. The backup file's path is the last line of output.
set -eu
DEST="${1:-${VOXMEM_BACKUP_DIR:-./backups}}"
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ -x "$HERE/.venv/bin/voxmem" ]; then
    VOXMEM="$HERE/.venv/bin/voxmem"
elif command -v voxmem >/dev/null 2>&1; then
    VOXMEM="voxmem"
else
    echo "error: voxmem not found (run 'make install' or install the package)" >&2
    exit 1
fi
exec "$VOXMEM" backup "$DEST"
