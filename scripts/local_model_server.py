"""Serves the local model with llama.cpp's own HTTP server, embedded in the `xllamacpp` wheel.

OpenAI-compatible: /v1/chat/completions (with `response_format: json_schema` enforced by
constrained decoding), /v1/models, /health. Binds 127.0.0.1 on a free port unless --port is
given, prints `quarry-local-model ready http://127.0.0.1:PORT/v1` once it answers, and serves
until it is terminated. scripts/lib.sh (`start_local_model`) runs it from its virtualenv.
"""

import argparse
import signal
import sys
import threading
import urllib.request

import xllamacpp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="path of the GGUF file")
    parser.add_argument("--alias", default="smollm2-135m", help="model name in the API")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--parallel", type=int, default=2, help="requests decoded at once")
    parser.add_argument("--ctx", type=int, default=2048, help="context tokens per request")
    args = parser.parse_args()

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx * args.parallel
    # Greedy decoding unless a request sets its own temperature: extraction wants the most likely
    # answer, and the same input then gets the same answer (llama.cpp's default is 0.8, which
    # made a 135M model ramble differently on every run).
    params.sampling.temp = 0.0
    server = xllamacpp.Server(params)
    address = server.listening_address
    if not address.startswith("http"):
        address = f"http://{address}"
    with urllib.request.urlopen(f"{address}/health", timeout=30) as health:
        if health.status != 200:
            print(f"the server is not healthy: HTTP {health.status}", file=sys.stderr)
            return 1
    print(f"quarry-local-model ready {address}/v1", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
