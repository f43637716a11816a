// The memory graph: one node per memory, coloured by sector; one edge per link, thicker and
// darker the stronger its weight. A small deterministic force layout (no library: the console
// has no build step and may not load anything from a CDN) drawn as SVG. Nodes are focusable
// buttons: Tab moves between them, Enter or Space selects, arrow keys move to a neighbour.
const SVG = "http://www.w3.org/2000/svg";
export const SECTORS = ["semantic", "episodic", "procedural", "emotional", "reflective"];

function el(name, attrs = {}) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// Seeded: the same memories always land in the same places.
function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
    return ((s >>> 0) % 10000) / 10000;
  };
}

export function layout(nodes, edges, width, height) {
  const n = nodes.length;
  const cx = width / 2, cy = height / 2;
  const rand = rng(n * 7919 + edges.length);
  const radius = Math.min(width, height) * 0.38;
  // Start on a circle, grouped by sector, so the picture is readable even before forces act.
  const order = [...nodes].sort(
    (a, b) => SECTORS.indexOf(a.sector) - SECTORS.indexOf(b.sector) || a.id - b.id);
  order.forEach((node, i) => {
    const angle = (2 * Math.PI * i) / Math.max(n, 1);
    node.x = cx + radius * Math.cos(angle) + (rand() - 0.5) * 4;
    node.y = cy + radius * Math.sin(angle) + (rand() - 0.5) * 4;
  });
  if (n < 2) {
    if (n === 1) { nodes[0].x = cx; nodes[0].y = cy; }
    return;
  }
  const index = new Map(nodes.map((node, i) => [node.id, i]));
  const ideal = Math.sqrt((width * height) / n) * 0.6;
  let temperature = width / 10;
  for (let step = 0; step < 250; step++) {
    const dx = new Float64Array(n), dy = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      for (let j = i + 1; j < n; j++) {
        let x = nodes[i].x - nodes[j].x, y = nodes[i].y - nodes[j].y;
        const d2 = Math.max(x * x + y * y, 0.01), d = Math.sqrt(d2);
        const force = (ideal * ideal) / d;
        x /= d; y /= d;
        dx[i] += x * force; dy[i] += y * force;
        dx[j] -= x * force; dy[j] -= y * force;
      }
    }
    for (const edge of edges) {
      const a = index.get(edge.source), b = index.get(edge.target);
      if (a === undefined || b === undefined) continue;
      const x = nodes[a].x - nodes[b].x, y = nodes[a].y - nodes[b].y;
      const d = Math.max(Math.sqrt(x * x + y * y), 0.01);
      const force = ((d * d) / ideal) * (0.5 + edge.weight);
      dx[a] -= (x / d) * force; dy[a] -= (y / d) * force;
      dx[b] += (x / d) * force; dy[b] += (y / d) * force;
    }
    for (let i = 0; i < n; i++) {
      // A weak pull to the centre keeps unlinked memories on the canvas.
      dx[i] += (cx - nodes[i].x) * 0.05 * ideal / 10;
      dy[i] += (cy - nodes[i].y) * 0.05 * ideal / 10;
      const len = Math.max(Math.sqrt(dx[i] * dx[i] + dy[i] * dy[i]), 0.01);
      const move = Math.min(len, temperature);
      nodes[i].x = Math.min(width - 70, Math.max(70, nodes[i].x + (dx[i] / len) * move));
      nodes[i].y = Math.min(height - 40, Math.max(24, nodes[i].y + (dy[i] / len) * move));
    }
    temperature = Math.max(temperature * 0.97, 0.5);
  }
}

function short(text, max = 60) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

// memories: CONTRACT memory records (with links). onSelect(memory) when a node is chosen.
export function drawGraph(container, memories, onSelect) {
  container.replaceChildren();
  const width = 720, height = 420;
  const nodes = memories.map((m) => ({ id: m.id, sector: m.sector, memory: m }));
  const ids = new Set(nodes.map((node) => node.id));
  const seen = new Set();
  const edges = [];
  for (const m of memories) {
    for (const link of m.links || []) {
      if (!ids.has(link.memory_id)) continue;
      const key = m.id < link.memory_id ? `${m.id}-${link.memory_id}` : `${link.memory_id}-${m.id}`;
      if (seen.has(key)) continue;
      seen.add(key);
      edges.push({ source: m.id, target: link.memory_id, weight: Number(link.weight) || 0 });
    }
  }
  layout(nodes, edges, width, height);
  const byId = new Map(nodes.map((node) => [node.id, node]));

  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "group",
    "aria-label": `Memory graph: ${nodes.length} memories, ${edges.length} links`,
    class: "graph",
  });
  const title = el("title");
  title.textContent = "Memory graph";
  svg.append(title);
  const edgeLayer = el("g", { class: "edges", "aria-hidden": "true" });
  for (const edge of edges) {
    const a = byId.get(edge.source), b = byId.get(edge.target);
    const line = el("line", {
      x1: a.x.toFixed(1), y1: a.y.toFixed(1), x2: b.x.toFixed(1), y2: b.y.toFixed(1),
      "stroke-width": (0.5 + edge.weight * 4).toFixed(2),
      "stroke-opacity": (0.25 + edge.weight * 0.7).toFixed(2),
      class: "edge",
      "data-weight": edge.weight,
    });
    const tip = el("title");
    tip.textContent = `link weight ${edge.weight.toFixed(2)}`;
    line.append(tip);
    edgeLayer.append(line);
  }
  svg.append(edgeLayer);

  const neighbours = new Map(nodes.map((node) => [node.id, []]));
  for (const edge of edges) {
    neighbours.get(edge.source).push(edge.target);
    neighbours.get(edge.target).push(edge.source);
  }
  const nodeLayer = el("g", { class: "nodes" });
  const elements = new Map();
  for (const node of nodes) {
    const m = node.memory;
    const r = 7 + Number(m.salience || 0) * 9;
    const g = el("g", {
      class: `node sector-${m.sector}`,
      transform: `translate(${node.x.toFixed(1)},${node.y.toFixed(1)})`,
      tabindex: "0",
      role: "button",
      "data-memory-id": m.id,
      "aria-label": `${m.sector} memory ${m.id}: ${m.content}. Salience ${m.salience}.`
        + ` ${neighbours.get(node.id).length} links.`,
    });
    const tip = el("title");
    tip.textContent = `${m.sector} · ${m.content}`;
    g.append(tip, el("circle", { r: r.toFixed(1) }));
    const label = el("text", { y: (r + 12).toFixed(1), "text-anchor": "middle" });
    label.textContent = short(m.content, 28);
    g.append(label);
    const choose = () => {
      for (const other of elements.values()) other.classList.remove("selected");
      g.classList.add("selected");
      onSelect(m);
    };
    g.addEventListener("click", choose);
    g.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        choose();
      } else if (event.key.startsWith("Arrow")) {
        const next = neighbours.get(node.id)[0];
        const list = [...elements.keys()];
        const i = list.indexOf(node.id);
        const target = event.key === "ArrowRight" || event.key === "ArrowDown"
          ? (next ?? list[(i + 1) % list.length])
          : list[(i - 1 + list.length) % list.length];
        event.preventDefault();
        elements.get(target)?.focus();
      }
    });
    elements.set(node.id, g);
    nodeLayer.append(g);
  }
  svg.append(nodeLayer);

  const legend = document.createElement("ul");
  legend.className = "legend";
  legend.setAttribute("aria-label", "Sector colours");
  for (const sector of SECTORS) {
    const item = document.createElement("li");
    item.innerHTML = `<span class="swatch sector-${sector}" aria-hidden="true"></span>${sector}`;
    legend.append(item);
  }
  const weights = document.createElement("li");
  weights.textContent = "edge width = link weight";
  legend.append(weights);
  container.append(svg, legend);
  return { select: (id) => elements.get(id)?.dispatchEvent(new Event("click")) };
}
