"""Ray Serve under the bench's control: runs in bench/.venvs/ray, driven by JSON lines on stdin.

    python ray_host.py --port P --temp-dir DIR

Starts a local Ray (no dashboard, loopback, usage stats off) and Serve's HTTP proxy on
127.0.0.1:P, prints {"ready": ...}, then answers one JSON line per command:
  {"cmd": "deploy", "app_dir": D, "version": V, "replicas": 2}       2 fixed replicas
  {"cmd": "deploy", "app_dir": D, "version": V, "autoscale": {...}}  Ray's autoscaling_config
  {"cmd": "replicas"}   running replicas of the bench app
  {"cmd": "delete"}     remove the app (its replicas stop)
  {"cmd": "quit"}       serve.shutdown(), ray.shutdown(), exit
Every Ray process is a descendant of this one (ray.init starts the GCS and the raylet as
children), so the bench can also stop whatever a failed shutdown leaves behind.

The deployment is a shim that loads bench/apps/<app>/app.py in each replica and calls its
ASGI `app` once per request (Serve hands the replica a Starlette Request): the same user
code as the other systems get, behind Ray's own proxy and router. A new `version` makes
Serve roll the replicas, which re-import app.py: that is the "redeploy" of the swap scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Replies go to the original stdout; everything else (Ray prints some of its daemons' logs on
# the driver's stdout) goes to stderr, so the bench never reads a stray line as an answer.
REPLIES = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

import ray  # noqa: E402
from ray import serve  # noqa: E402

APP = "bench"
PREFIX = "@bench "


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class Asgi:
    def __init__(self, app_dir: str, version: str, env: dict[str, str]) -> None:
        import importlib.util

        os.environ.update(env)
        spec = importlib.util.spec_from_file_location(f"bench_app_{os.getpid()}", os.path.join(app_dir, "app.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.app = module.app
        self.version = version

    async def __call__(self, request):  # type: ignore[no-untyped-def]
        from starlette.responses import Response

        body = await request.body()
        sent: list[dict] = []
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {**request.scope, "root_path": ""}
        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        headers = {k.decode(): v.decode() for k, v in start.get("headers", []) if k.lower() != b"content-length"}
        return Response(content, status_code=start["status"], headers=headers)


def reply(**fields: object) -> None:
    REPLIES.write(PREFIX + json.dumps(fields) + "\n")
    REPLIES.flush()


def running_replicas() -> int:
    status = serve.status()
    app = status.applications.get(APP)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def deploy(cmd: dict) -> dict:
    env = {k: v for k, v in cmd.get("env", {}).items()}
    options: dict = {}
    if cmd.get("autoscale"):
        options["autoscaling_config"] = cmd["autoscale"]
    else:
        options["num_replicas"] = int(cmd.get("replicas", 2))
    t0 = time.monotonic()
    serve.run(Asgi.options(**options).bind(cmd["app_dir"], cmd["version"], env), name=APP, route_prefix="/")
    return {"deployed_s": time.monotonic() - t0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args()
    t0 = time.monotonic()
    try:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=args.temp_dir,
                 object_store_memory=80 * 1024 * 1024, logging_level="ERROR", log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    except Exception as exc:  # noqa: BLE001 - reported to the bench, which puts it in the report
        reply(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
        return
    reply(ready=True, start_s=time.monotonic() - t0, ray=ray.__version__)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "deploy":
                reply(ok=True, **deploy(cmd))
            elif cmd["cmd"] == "replicas":
                reply(ok=True, replicas=running_replicas())
            elif cmd["cmd"] == "delete":
                serve.delete(APP)
                reply(ok=True)
            elif cmd["cmd"] == "quit":
                break
        except Exception as exc:  # noqa: BLE001
            reply(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    reply(ok=True, quit=True)


if __name__ == "__main__":
    main()
