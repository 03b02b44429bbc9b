// Keyboard first: the guess is selected so typing replaces it; Enter saves; U = no number / unreadable.
document.addEventListener("DOMContentLoaded", function () {
  var box = document.querySelector(".box");
  if (box) {  // the number's box, in percent of the photo (no inline styles: the page's CSP forbids them)
    ["left", "top", "width", "height"].forEach(function (k) { box.style[k] = box.dataset[k] + "%"; });
  }
  var text = document.getElementById("text");
  if (!text) return;
  text.focus();
  text.select();
  text.addEventListener("keydown", function (e) {
    if (e.key === "u" || e.key === "U") {
      e.preventDefault();
      document.getElementById("unreadable").click();
    } else if (e.key.length === 1 && !/[0-9]/.test(e.key) && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();  // digits only
    }
  });
});
