"""A throwaway PostgreSQL cluster on 127.0.0.1, and the Prefect and MLflow servers on it.

This is the verified scale-out recipe of `docs/scale-out.md` in code: one cluster with a database per
server, `mlflow server` on `postgresql+psycopg2://` with proxied artifacts, and `prefect server start`
on `postgresql+asyncpg://`. The cluster lives in a temporary folder (data, Unix socket, log) and is
deleted by `stop()`: nothing is written to /etc/postgresql, and the system's own cluster is untouched.

PostgreSQL refuses to run as root, so when this process is root the server tools run as the `postgres`
user (created by Debian's `postgresql` package) through `runuser`.
"""

import base64
import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cli.stack import _bin, wait_http

APP_ROLE = "continual_opd"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries (or, as root, the `postgres` user) are missing on this machine."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Folder with `initdb` and `pg_ctl`: Debian keeps them off PATH in /usr/lib/postgresql/<major>/bin."""
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).resolve().parent / "psql").exists():
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def missing_reason() -> str | None:
    """Why a throwaway cluster cannot start here, or None when it can."""
    if postgres_bindir() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                "`apt-get install -y postgresql` (Debian) provides them")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run PostgreSQL as (it refuses root)"
    return None


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PostgresCluster:
    """A running throwaway cluster; `url(db)` gives SQLAlchemy URLs for the app role."""

    root: Path
    port: int
    password: str
    bindir: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str, driver: str = "psycopg2") -> str:
        """`postgresql+<driver>://continual_opd:<password>@127.0.0.1:<port>/<database>`."""
        return f"postgresql+{driver}://{APP_ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the cluster's private Unix socket; returns unaligned rows."""
        out = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
             "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed on {database!r}: {out.stderr.strip()}")
        return out.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create a database owned by the app role; returns its psycopg2 URL."""
        self.psql(f'CREATE DATABASE "{name}" OWNER {APP_ROLE}')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and delete the whole cluster (data, socket, log)."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(_as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                      "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(port: int | None = None) -> PostgresCluster:
    """initdb + start a cluster in a new temp folder, listening on 127.0.0.1:<port> only.

    Local socket connections are trusted (the socket lives in the private temp folder); TCP connections
    need the app role's random password (scram-sha-256). fsync is off: the cluster is thrown away.
    """
    reason = missing_reason()
    if reason:
        raise PostgresUnavailable(reason)
    bindir = postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="continual-opd-pg-"))
    cluster = PostgresCluster(root=root, port=port or free_port(), password=secrets.token_hex(12), bindir=bindir)
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        run = lambda argv: subprocess.run(_as_owner(argv), capture_output=True, text=True, timeout=120)  # noqa: E731
        init = run([str(bindir / "initdb"), "-D", str(cluster.data), "-U", "postgres", "-E", "UTF8", "--no-locale",
                    "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"])
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        options = f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = run([str(bindir / "pg_ctl"), "-D", str(cluster.data), "-l", str(cluster.log), "-o", options,
                     "-w", "-t", "60", "start"])
        if start.returncode != 0:
            log = cluster.log.read_text()[-2000:] if cluster.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {start.stderr.strip()}\n{log}")
        cluster.psql(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{cluster.password}'")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class Server:
    """A server process started here, in its own process group; `ready()` waits for its health URL."""

    name: str
    proc: subprocess.Popen
    url: str
    health: str
    log_path: Path

    def ready(self, timeout: float = 120.0) -> "Server":
        """Wait for the health URL, failing at once (with the log's tail) if the server exits first."""
        deadline = time.time() + timeout
        while True:
            try:
                wait_http(self.health, timeout=1.0)
                return self
            except TimeoutError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    tail = Path(self.log_path).read_text()[-3000:]
                    raise RuntimeError(f"{self.name} at {self.health} never answered (exit code "
                                       f"{self.proc.returncode}); last log lines:\n{tail}")

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server together with the workers it forked (its process group)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # a worker that outlived its parent
            os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Credentials:
    """A user of an authenticated MLflow server (repr hides the password, so it cannot leak into a log)."""

    username: str
    password: str = field(repr=False)

    def header(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}


def write_basic_auth_config(path: Path, database_uri: str, admin_username: str = "admin") -> Path:
    """The `basic-auth` app's ini: its user store on `database_uri`, new users may read, no password in the file.

    The admin password goes in `MLFLOW_AUTH_ADMIN_PASSWORD` (see `launch_mlflow_server`): MLflow 3.17
    ships no default one and refuses to start without it. Verified credentials are cached for 60 s:
    each check is a deliberately slow scrypt hash, and one registration makes dozens of requests.
    """
    path = Path(path)
    path.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {database_uri}\n"
                    f"admin_username = {admin_username}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    "auth_cache_ttl_seconds = 60\n")
    path.chmod(0o600)
    return path


def launch_mlflow_server(backend_uri: str, artifacts_destination: str, port: int, log_path: Path,
                         workers: int = 1, auth_config: Path | None = None, admin: Credentials | None = None,
                         env: dict | None = None) -> Server:
    """`mlflow server` on a database URI, artifacts proxied to `artifacts_destination` (a folder or s3://).

    The CLI creates the schema before it forks its uvicorn workers, so a fresh database needs no separate
    `mlflow db upgrade`. Job execution is off: 2 processes instead of ~10 (docs/library-notes.md). With `auth_config`
    (see `write_basic_auth_config`) and `admin`, it runs MLflow's `basic-auth` app: every request but
    /health needs a user.
    """
    # The database URI (it holds a password) goes through the environment, not argv, which `ps` shows to all.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_BACKEND_STORE_URI": backend_uri,
           **(env or {})}
    argv = [_bin("mlflow"), "server", "--artifacts-destination", artifacts_destination, "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers)]
    if auth_config is not None:
        if admin is None:
            raise ValueError("an authenticated MLflow server needs the admin's credentials (admin=Credentials(...))")
        argv += ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(auth_config), MLFLOW_AUTH_ADMIN_USERNAME=admin.username,
                   MLFLOW_AUTH_ADMIN_PASSWORD=admin.password,
                   MLFLOW_FLASK_SERVER_SECRET_KEY=env.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(16))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    return Server("mlflow server", proc, url, f"{url}/health", Path(log_path))


def create_mlflow_user(server_url: str, admin: Credentials, username: str) -> Credentials:
    """Create a user on a `basic-auth` MLflow server (the admin's REST call); returns its credentials."""
    user = Credentials(username, secrets.token_urlsafe(16))
    body = json.dumps({"username": user.username, "password": user.password}).encode()
    request = urllib.request.Request(f"{server_url}/api/2.0/mlflow/users/create", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **admin.header()})
    with urllib.request.urlopen(request, timeout=30):
        pass
    return user


def launch_prefect_server(database_url: str, port: int, prefect_home: Path, log_path: Path,
                          env: dict | None = None) -> Server:
    """`prefect server start` with its database on PostgreSQL (`postgresql+asyncpg://`); it migrates on start."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    env.pop("PREFECT_API_URL", None)  # a client setting; the server must not be pointed at another API
    with open(log_path, "w") as log:
        proc = subprocess.Popen([_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    return Server("prefect server", proc, url, f"{url}/health", Path(log_path))


@dataclass
class PostgresStack:
    """The running scale-out stack; `client_env` is what a continual-opd process needs to use it."""

    cluster: PostgresCluster
    mlflow: Server
    prefect: Server
    artifacts: Path
    mlflow_user: Credentials | None = None

    @property
    def client_env(self) -> dict[str, str]:
        env = {"MLFLOW_TRACKING_URI": self.mlflow.url, "PREFECT_API_URL": self.prefect.url}
        if self.mlflow_user is not None:  # MLflow's client reads these; they never go into params or tags
            env.update(MLFLOW_TRACKING_USERNAME=self.mlflow_user.username,
                       MLFLOW_TRACKING_PASSWORD=self.mlflow_user.password)
        return env


@contextlib.contextmanager
def postgres_stack(workdir: Path, basic_auth: bool = True):
    """A throwaway cluster with an MLflow server and a Prefect server on it, all on free 127.0.0.1 ports.

    With `basic_auth` the MLflow server runs the `basic-auth` app (its user store in the cluster too) and
    `client_env` carries a service user `continual-opd` created by the admin. Both servers start at once
    (each takes 10-25 s on 2 busy cores). On exit everything started here is stopped and the cluster
    deleted; logs and the artifact folder stay in `workdir`.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = start_cluster()
    servers: list[Server] = []
    try:
        mlflow_db = cluster.create_database("mlflow")
        cluster.create_database("prefect")
        artifacts = workdir / "mlflow-artifacts"
        artifacts.mkdir(exist_ok=True)
        admin, auth_config = None, None
        if basic_auth:
            admin = Credentials("admin", secrets.token_urlsafe(16))
            auth_config = write_basic_auth_config(workdir / "basic_auth.ini", cluster.create_database("mlflow_auth"))
        servers.append(launch_mlflow_server(mlflow_db, artifacts.as_uri(), free_port(), workdir / "mlflow-server.log",
                                            auth_config=auth_config, admin=admin))
        servers.append(launch_prefect_server(cluster.url("prefect", "asyncpg"), free_port(), workdir / "prefect-home",
                                             workdir / "prefect-server.log"))
        for server in servers:
            server.ready()
        user = create_mlflow_user(servers[0].url, admin, "continual-opd") if basic_auth else None
        yield PostgresStack(cluster, servers[0], servers[1], artifacts, user)
    finally:
        for server in servers:
            server.stop()
        cluster.stop()
