// The gallery's filters and pages (report.py writes the cards; nothing here comes from the data
// but the cards' own data- attributes). Every section keeps all its cards in the page; this
// shows the ones matching the filters, page_size at a time, and draws the threshold line
// between two shown cards on either side of it.
(function () {
  var body = document.body;
  var pageSize = parseInt(body.getAttribute('data-page-size'), 10) || 50;
  var lineText = body.getAttribute('data-threshold-text');
  var lengthFilter = document.getElementById('filter-length');
  var kindFilter = document.getElementById('filter-kind');
  var sections = Array.prototype.slice.call(document.querySelectorAll('section.cards'));

  function matches(card) {
    var length = lengthFilter.value, kind = kindFilter.value;
    if (length && card.getAttribute('data-length') !== length) return false;
    if (!kind) return true;
    if (kind === 'accepted' || kind === 'referred') return card.getAttribute('data-decision') === kind;
    return card.getAttribute('data-kind') === kind;
  }

  function line(above, below) {
    var div = document.createElement('div');
    div.className = 'threshold-line';
    div.textContent = lineText + ' \u2014 above: ' + above + ', below: ' + below;
    return div;
  }

  function render(section) {
    var grid = section.querySelector('.grid');
    if (!grid) return;
    var cards = Array.prototype.slice.call(grid.querySelectorAll('.card'));
    Array.prototype.slice.call(grid.querySelectorAll('.threshold-line')).forEach(function (l) { l.remove(); });
    var shown = cards.filter(matches);
    var pages = Math.max(1, Math.ceil(shown.length / pageSize));
    var page = Math.min(parseInt(section.getAttribute('data-page'), 10) || 0, pages - 1);
    section.setAttribute('data-page', page);
    var start = page * pageSize, end = Math.min(shown.length, start + pageSize);
    cards.forEach(function (c) { c.hidden = true; });
    for (var i = start; i < end; i++) shown[i].hidden = false;
    // The threshold line: between consecutive shown cards with different decisions (also at the
    // top or bottom of a page when the two fall on either side of a page break).
    for (var j = Math.max(1, start); j <= Math.min(end, shown.length - 1); j++) {
      var a = shown[j - 1].getAttribute('data-decision'), b = shown[j].getAttribute('data-decision');
      if (a === b) continue;
      if (j < end) grid.insertBefore(line(a, b), shown[j]);
      else shown[end - 1].after(line(a, b));
    }
    section.querySelector('.where').textContent = shown.length
      ? 'cards ' + (start + 1) + '\u2013' + end + ' of ' + shown.length + ' (page ' + (page + 1) + ' of ' + pages + ')'
      : 'no card matches';
    section.querySelector('.prev').disabled = page === 0;
    section.querySelector('.next').disabled = page >= pages - 1;
    section.querySelector('.none-match').hidden = shown.length > 0;
  }

  function renderAll() { sections.forEach(render); }

  sections.forEach(function (section) {
    var prev = section.querySelector('.prev'), next = section.querySelector('.next');
    if (!prev) return;
    prev.addEventListener('click', function () {
      section.setAttribute('data-page', (parseInt(section.getAttribute('data-page'), 10) || 0) - 1); render(section);
    });
    next.addEventListener('click', function () {
      section.setAttribute('data-page', (parseInt(section.getAttribute('data-page'), 10) || 0) + 1); render(section);
    });
  });
  [lengthFilter, kindFilter].forEach(function (f) {
    f.addEventListener('change', function () {
      sections.forEach(function (s) { s.setAttribute('data-page', 0); });
      renderAll();
    });
  });
  renderAll();

  // <body data-images="loaded/total"> once the page has loaded: the browser test reads it.
  window.addEventListener('load', function () {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    body.setAttribute('data-images', ok + '/' + imgs.length);
  });
})();
