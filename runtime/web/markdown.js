// Markdown for model answers, written by hand and safe by construction: every piece of the
// model's text is HTML-escaped before any tag of ours is added, so `<img onerror=…>` stays text.
// Fenced code is kept exactly as typed; images are never loaded (shown as links). Paragraphs,
// headings, lists and tables take their direction from their own text (dir="auto").
"use strict";

const KilnMarkdown = (() => {
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escape = (s) => s.replace(/[&<>"']/g, (c) => ESC[c]);
  const SAFE_URL = /^(https?:\/\/|mailto:)/i;

  function link(label, url, isImage) {
    const raw = url.replace(/&amp;/g, "&").replace(/&quot;/g, '"').replace(/&#39;/g, "'")
      .replace(/&lt;/g, "<").replace(/&gt;/g, ">");
    if (!SAFE_URL.test(raw)) return (isImage ? "!" : "") + `[${label}](${url})`;
    const text = isImage ? `image: ${label || url}` : label;
    return `<a href="${url}" target="_blank" rel="noopener noreferrer">${text}</a>`;
  }

  // Inline spans of one block of raw text -> safe HTML.
  function inline(raw) {
    const codes = [];
    let s = raw.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, ticks, body) => {
      codes.push(`<code>${escape(body)}</code>`);
      return `\u0000${codes.length - 1}\u0000`;
    });
    s = escape(s);
    s = s.replace(/(!?)\[([^\]\n]*)\]\(([^()\s]+)\)/g, (_, bang, label, url) => link(label, url, !!bang));
    s = s.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>");
    s = s.replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>");
    s = s.replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
    s = s.replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
    s = s.replace(/\n/g, "<br>");
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => codes[+i]);
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}> ?/;
  const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
  const startsBlock = (line) => FENCE.test(line) || HEADING.test(line) || RULE.test(line) ||
    QUOTE.test(line) || ITEM.test(line);

  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  }

  function code(body, lang) {
    const label = lang ? `<span class="lang">${escape(lang)}</span>` : "<span></span>";
    return `<div class="code"><div class="code-head">${label}` +
      `<button type="button" class="copy-code">Copy</button></div>` +
      `<pre><code>${escape(body)}</code></pre></div>`;
  }

  function blocks(lines) {
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = FENCE.exec(line))) {
        const close = new RegExp(`^ {0,3}${m[1][0] === "`" ? "`" : "~"}{${m[1].length},}\\s*$`);
        const body = [];
        i++;
        while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
        i++; // the closing fence (or the end of a still-streaming answer)
        out.push(code(body.join("\n"), m[2]));
      } else if (!line.trim()) {
        i++;
      } else if ((m = HEADING.exec(line))) {
        out.push(`<h${m[1].length} dir="auto">${inline(m[2])}</h${m[1].length}>`);
        i++;
      } else if (RULE.test(line)) {
        out.push("<hr>");
        i++;
      } else if (QUOTE.test(line)) {
        const body = [];
        while (i < lines.length && QUOTE.test(lines[i])) body.push(lines[i++].replace(QUOTE, ""));
        out.push(`<blockquote>${blocks(body)}</blockquote>`);
      } else if ((m = ITEM.exec(line))) {
        const ordered = /\d/.test(m[2]);
        const indent = m[1].length;
        const items = [];
        while (i < lines.length) {
          const it = ITEM.exec(lines[i]);
          if (it && it[1].length <= indent + 1 && /\d/.test(it[2]) === ordered) {
            items.push([it[3]]);
            i++;
          } else if (items.length && lines[i].trim() &&
                     (/^\s/.test(lines[i]) || !startsBlock(lines[i]))) {
            items[items.length - 1].push(lines[i++].replace(/^\s{0,4}/, ""));
          } else {
            break;
          }
        }
        const tag = ordered ? "ol" : "ul";
        const start = ordered && parseInt(m[2], 10) !== 1 ? ` start="${parseInt(m[2], 10)}"` : "";
        const lis = items.map((it) => {
          const nested = it.slice(1).some((l) => ITEM.test(l) || FENCE.test(l));
          return `<li>${nested ? inline(it[0]) + blocks(it.slice(1)) : inline(it.join("\n"))}</li>`;
        });
        out.push(`<${tag} dir="auto"${start}>${lis.join("")}</${tag}>`);
      } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) &&
                 lines[i + 1].includes("-")) {
        const head = cells(line);
        i += 2;
        const rows = [];
        while (i < lines.length && lines[i].includes("|") && lines[i].trim()) rows.push(cells(lines[i++]));
        const tr = (r, t) => `<tr>${r.map((c) => `<${t}>${inline(c)}</${t}>`).join("")}</tr>`;
        out.push(`<div class="table" dir="auto"><table><thead>${tr(head, "th")}</thead>` +
          `<tbody>${rows.map((r) => tr(r, "td")).join("")}</tbody></table></div>`);
      } else {
        const para = [];
        while (i < lines.length && lines[i].trim() && !(para.length && startsBlock(lines[i]))) {
          para.push(lines[i++]);
        }
        out.push(`<p dir="auto">${inline(para.join("\n"))}</p>`);
      }
    }
    return out.join("");
  }

  function render(text) {
    return blocks(String(text).replace(/\u0000/g, "").replace(/\r\n?/g, "\n").split("\n"));
  }

  return { render, escape };
})();
