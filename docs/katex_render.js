// Typesets formulas for docs/build.py: reads [{tex, display}] as JSON on stdin,
// writes [{html} or {error}] as JSON on stdout, in the same order.
const path = require("path");
const katex = require(path.join(__dirname, "node_modules", "katex"));

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const results = JSON.parse(input).map(({ tex, display }) => {
    try {
      return { html: katex.renderToString(tex, { displayMode: display, throwOnError: true, output: "html" }) };
    } catch (e) {
      return { error: e.message };
    }
  });
  process.stdout.write(JSON.stringify(results));
});
