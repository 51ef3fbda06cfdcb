/* Sorts a table.sortable by the clicked (or Enter-ed) column header; again: the other way.
   Numbers (a cell that starts with one: "0.51 ± 0.03", "+1.2e-03") compare as numbers when every
   filled cell of the column is one, else as text; empty and "-" cells go last. A cell's data-sort
   attribute, when set, is its sort key. Inlined into the report: nothing is fetched. */
(function () {
  var NUM = /^[+\u2212-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?(\s|$)/i;
  function text(cell) { return cell ? (cell.getAttribute("data-sort") || cell.textContent).trim() : ""; }
  function missing(t) { return t === "" || t === "-"; }
  function number(t) { return parseFloat(t.replace("\u2212", "-")); }
  function sortBy(table, col, th) {
    var body = table.tBodies[0], heads = table.tHead.rows[0].cells;
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.map.call(body.rows, function (r, i) { return {row: r, key: text(r.cells[col]), i: i}; });
    var numeric = rows.every(function (r) { return missing(r.key) || NUM.test(r.key); });
    rows.sort(function (a, b) {
      if (missing(a.key) || missing(b.key)) { return missing(a.key) - missing(b.key) || a.i - b.i; }
      var c = numeric ? number(a.key) - number(b.key) : a.key.localeCompare(b.key, undefined, {numeric: true});
      return (asc ? c : -c) || a.i - b.i;
    });
    Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, col, th); }
      });
    });
  });
})();
