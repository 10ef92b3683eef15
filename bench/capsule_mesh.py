"""What the benchmarks that drive a whole mesh share: `capsule dev` on
fresh databases and free loopback ports, the REST calls they make, local
git repositories of sample apps, waiting for a deployment, and the CPU
time processes used."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def release_binary():
    """`capsule`, built for release; BENCH_PROFILE=dev takes the debug
    build instead (CI's smoke runs, which build nothing more), and
    BENCH_BINARY a binary built before."""
    if os.environ.get("BENCH_BINARY"):
        # A build kept aside, to measure two versions one after the other.
        return os.environ["BENCH_BINARY"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    if os.environ.get("BENCH_PROFILE") == "dev":
        subprocess.run(["cargo", "build", "--locked", "-q", "-p", "capsule-cli"], cwd=ROOT, check=True)
        return os.path.join(target, "debug", "capsule")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "capsule-cli"], cwd=ROOT, check=True)
    return os.path.join(target, "release", "capsule")


def admin_url(binary):
    return os.environ.get("CAPSULE_TEST_DATABASE_URL") or subprocess.run(
        [binary, "postgres", "up"], check=True, capture_output=True, text=True
    ).stdout.strip()


def cpu_seconds(pids):
    """User and system CPU time the processes have used (all their threads)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registries():
    """The registries' addresses as this host resolves them, as networks."""
    nets = set()
    for host in ("registry.npmjs.org", "pypi.org", "files.pythonhosted.org"):
        for info in socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP):
            ip = info[4][0]
            nets.add(f"{ip}/{128 if ':' in ip else 32}")
    return ",".join(sorted(nets))


def call(gateway, method, path, body=None, token=None):
    request = urllib.request.Request(
        f"http://{gateway}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def git(cwd, *args):
    subprocess.run(
        ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def until_live(gateway, token, deployment_id, limit=600):
    started = time.monotonic()
    while time.monotonic() - started < limit:
        deployment = call(gateway, "GET", f"/v1/deployments/{deployment_id}", token=token)
        state = deployment.get("state", "")
        if state == "DEPLOYMENT_STATE_LIVE":
            return deployment
        if state in ("DEPLOYMENT_STATE_FAILED", "DEPLOYMENT_STATE_CANCELED", "DEPLOYMENT_STATE_CRASHED"):
            raise SystemExit(f"deployment {deployment_id} is {state}: {deployment.get('statusMessage')}")
        time.sleep(0.05)
    raise SystemExit(f"deployment {deployment_id} not live within {limit} s")


def repository(root, source):
    """A git repository in `root` holding a copy of the folder `source`."""
    work = os.path.join(root, os.path.basename(source))
    shutil.copytree(source, work)
    git(work, "init", "-q")
    git(work, "add", "--all")
    git(work, "commit", "-q", "-m", os.path.basename(source))
    return work


@contextlib.contextmanager
def mesh(binary, admin, prefix, extra=None):
    """`capsule dev` on fresh databases and free ports, with a scratch
    folder (its repositories and the runner's directory) and a signed-in
    user: yields (gateway address, token, scratch folder)."""
    scratch = tempfile.mkdtemp(prefix=f"capsule-{prefix}-")
    # The runner's directory is inside: sandbox users pass through.
    os.chmod(scratch, 0o711)
    names = {kind: f"{prefix.replace('-', '_')}_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("auth", "project", "deploy")}
    base = admin.rsplit("/", 1)[0]
    for name in names.values():
        subprocess.run(["psql", admin, "-qc", f'CREATE DATABASE "{name}"'], check=True)
    gateway = f"127.0.0.1:{free_port()}"
    env = dict(os.environ)
    env.update(
        {
            "AUTH_DATABASE_URL": f"{base}/{names['auth']}",
            "PROJECT_DATABASE_URL": f"{base}/{names['project']}",
            "DEPLOY_DATABASE_URL": f"{base}/{names['deploy']}",
            "AUTH_GRPC_ADDR": f"127.0.0.1:{free_port()}",
            "PROJECT_GRPC_ADDR": f"127.0.0.1:{free_port()}",
            "DEPLOY_GRPC_ADDR": f"127.0.0.1:{free_port()}",
            "GATEWAY_GRPC_ADDR": f"127.0.0.1:{free_port()}",
            "GATEWAY_HTTP_ADDR": gateway,
            "CAPSULE_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "DEPLOY_RUNNER_SANDBOX": "bwrap",
            "DEPLOY_RUNNER_WORKDIR": os.path.join(scratch, "runner"),
            "DEPLOY_LOCAL_REPOSITORIES": scratch,
            "DEPLOY_ACME_DIRECTORY": "off",
            "GATEWAY_RATE_LIMIT_PER_SEC": "1000000",
            "GATEWAY_RATE_LIMIT_BURST": "1000000",
            "RUST_LOG": "warn",
            **(extra or {}),
        }
    )
    for kind in ("AUTH", "PROJECT", "DEPLOY"):
        env[f"{kind}_SERVICE_URL"] = "http://" + env[f"{kind}_GRPC_ADDR"]
    log = os.path.join(scratch, "mesh.log")
    process = subprocess.Popen([binary, "dev"], env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://{gateway}/readyz", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        else:
            with open(log) as text:
                raise SystemExit(f"the mesh did not get ready within 60 s:\n{text.read()[-3000:]}")
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        password = "correct horse battery staple"
        call(gateway, "POST", "/v1/auth:register", {"email": email, "password": password, "name": "Bench"})
        token = call(gateway, "POST", "/v1/auth:login", {"email": email, "password": password})["tokens"]["accessToken"]
        yield gateway, token, scratch
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        for name in names.values():
            subprocess.run(["psql", admin, "-qc", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
