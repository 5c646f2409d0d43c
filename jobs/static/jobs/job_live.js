// Follows a job's events on its admin page (jobs/admin.py, JobAdmin.live_shown): output as it comes, and a line
// with the status, the time since it started, the calls and the tokens so far. No library: the browser's own
// EventSource.
(function () {
  var box = document.getElementById("job-live");
  var line = document.getElementById("job-live-line");
  var out = document.getElementById("job-live-output");
  var state = {status: "", started: null, calls: 0, prompt: 0, completion: 0, remaining: null, inFlight: 0};
  function show() {
    var parts = [state.status];
    if (state.started) { parts.push(((Date.now() - state.started) / 1000).toFixed(1) + " s"); }
    parts.push(state.calls + " call(s)" + (state.inFlight ? " (" + state.inFlight + " running)" : ""));
    parts.push(state.prompt + " prompt + " + state.completion + " completion tokens");
    if (state.remaining !== null) { parts.push(state.remaining + " tokens left"); }
    line.textContent = parts.join(" \u00b7 ");
  }
  function append(text, isError) {
    var span = document.createElement("span");
    if (isError) { span.style.color = "#ba2121"; }
    span.textContent = text;
    out.appendChild(span);
    out.scrollTop = out.scrollHeight;
  }
  var source = new EventSource(box.dataset.url);
  source.addEventListener("status", function (e) {
    var data = JSON.parse(e.data);
    state.status = data.status;
    if (data.status === "running" && !state.started) { state.started = Date.now(); }
    show();
  });
  source.addEventListener("stdout", function (e) {
    var data = JSON.parse(e.data);
    append(data.text + (data.truncated ? "\n[stdout truncated]\n" : ""), false);
  });
  source.addEventListener("stderr", function (e) {
    var data = JSON.parse(e.data);
    append(data.text + (data.truncated ? "\n[stderr truncated]\n" : ""), true);
  });
  source.addEventListener("llm_call", function (e) {
    var data = JSON.parse(e.data);
    state.inFlight += data.phase === "start" ? 1 : -1;
    show();
  });
  source.addEventListener("usage", function (e) {
    var data = JSON.parse(e.data);
    state.calls = data.llmCalls; state.prompt = data.promptTokens; state.completion = data.completionTokens;
    state.remaining = data.remainingTokens;
    show();
  });
  source.addEventListener("result", function (e) {
    source.close();  // the stream is over: do not let the browser reconnect
    var data = JSON.parse(e.data);
    state.status = data.status + " (reload the page for the full record)";
    show();
  });
  setInterval(function () { if (source.readyState !== 2) { show(); } }, 1000);
})();
