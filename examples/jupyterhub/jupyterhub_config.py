"""JupyterHub with ysyncd as its real-time collaboration backend.

Run it with ``jupyterhub -f examples/jupyterhub/jupyterhub_config.py`` in an
environment holding ``ysyncd[jupyter]``, ``jupyterhub``, ``jupyterlab``,
``jupyter-docprovider`` and ``jupyter-collaboration-ui``, with
``configurable-http-proxy`` (npm) on the PATH. Then sign in at
http://127.0.0.1:8000 as anyone (any password: DummyAuthenticator).

- **ysyncd is a managed Hub service.** The Hub starts it and restarts it
  with itself. ysyncd reads and writes notebooks through each user's server
  (``--jupyter-files contents``, via the proxy), so it needs no access to the
  users' disks and runs anywhere the proxy is reachable. It holds no Hub
  token for that: a user's server runs the user's code, which sees every
  request the server gets, so ysyncd shows each server only that server's
  own glue secret (``--jupyter-credentials glue``), which the server holds
  already. Its service has no role.
- **Single-user servers run the ysyncd.jupyter extension**, enabled by the
  ``jupyter_server_config.d/ysyncd.json`` that ``ysyncd[jupyter]`` installs.
  The browser talks to its own server only; the extension checks the user's
  permissions and pipes the room sockets to ysyncd with its server's own
  glue secret, derived from the master secret that only the Hub and ysyncd
  read. It serves ysyncd's file requests for that same secret only.
- **Users may share their servers** (``shares!user``): once alice shares hers
  with bob, bob opens her notebooks and edits them with her, live.

This is a try-out on one machine: everyone runs as the Hub's Unix user, with
homes under the data directory. For production, swap the authenticator and
the spawner (here every user could read the master secret, as they could
read each other's files), keep ysyncd on a private network, and keep the
master secret readable by the Hub and ysyncd only (``compose.yaml`` and
``kubernetes-sidecar.yaml`` show how it is laid out in containers).

Every value a deployment changes comes from the environment:

- ``EXAMPLE_DATA_DIR``: where the Hub, ysyncd and the homes keep their data
  (``./data`` next to this file);
- ``EXAMPLE_BIND_URL``: the public URL the proxy listens on
  (``http://127.0.0.1:8000``);
- ``EXAMPLE_HUB_PORT``, ``EXAMPLE_PROXY_API_PORT``, ``EXAMPLE_YSYNCD_PORT``:
  loopback ports of the Hub's API, the proxy's API and ysyncd (8081, 8001,
  1234);
- ``EXAMPLE_AUTH_CACHE_SECONDS``: how long a single-user server trusts the
  Hub's word about a token, and how often open room sockets are checked
  again (30): so how soon a share opens a server and an unshare closes it;
- ``EXAMPLE_GLUE_SECRET_FILE``: the master secret of ysyncd, from which
  each single-user server's own is derived (made in the data directory if
  absent);
- ``EXAMPLE_YSYNCD_URL``: set it when ysyncd runs elsewhere (its own
  container, a sidecar), with the options below: the Hub then does not start
  it, and single-user servers dial that URL.
"""

import os
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ysyncd.auth.glue import namespace_secret

c = get_config()  # type: ignore[name-defined]  # noqa: F821

DATA = Path(
    os.environ.get("EXAMPLE_DATA_DIR") or Path(__file__).parent / "data"
).resolve()
BIND_URL = os.environ.get("EXAMPLE_BIND_URL") or "http://127.0.0.1:8000"
HUB_PORT = int(os.environ.get("EXAMPLE_HUB_PORT") or 8081)
PROXY_API_PORT = int(os.environ.get("EXAMPLE_PROXY_API_PORT") or 8001)
YSYNCD_PORT = int(os.environ.get("EXAMPLE_YSYNCD_PORT") or 1234)
AUTH_CACHE_SECONDS = int(os.environ.get("EXAMPLE_AUTH_CACHE_SECONDS") or 30)

DATA.mkdir(parents=True, exist_ok=True)

# --- the Hub and its proxy ----------------------------------------------------------

c.JupyterHub.bind_url = BIND_URL
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = HUB_PORT
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PROXY_API_PORT}"
c.ConfigurableHTTPProxy.pid_file = str(DATA / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{DATA / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(DATA / "jupyterhub_cookie_secret")

c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "simple"  # every user as the Hub's Unix user
c.SimpleLocalProcessSpawner.home_dir_template = str(DATA / "home" / "{username}")

# --- the glue secret: ysyncd trusts whoever holds it ----------------------------------

SECRET_FILE = Path(
    os.environ.get("EXAMPLE_GLUE_SECRET_FILE") or DATA / "ysyncd-glue.secret"
)
if not SECRET_FILE.exists():  # made once, readable by the Hub's user only
    SECRET_FILE.touch(mode=0o600)
    SECRET_FILE.write_text(secrets.token_hex(32) + "\n")

# --- ysyncd: a managed service, or an external one --------------------------------

# Where ysyncd finds each user's server: through the proxy, as the browser does.
public = urlsplit(BIND_URL)
proxy_host = (
    "127.0.0.1" if public.hostname in (None, "", "0.0.0.0") else public.hostname
)
proxy_port = public.port or (443 if public.scheme == "https" else 80)
proxy_path = public.path.rstrip("/")
users_url = f"{public.scheme}://{proxy_host}:{proxy_port}{proxy_path}/user"

YSYNCD_URL = os.environ.get("EXAMPLE_YSYNCD_URL") or f"ws://127.0.0.1:{YSYNCD_PORT}"
YSYNCD_COMMAND = [
    # The Hub's own Python: ysyncd is installed next to it.
    sys.executable,
    "-m",
    "ysyncd",
    "serve",
    *("--host", "127.0.0.1", "--port", str(YSYNCD_PORT)),
    *("--db", str(DATA / "ysyncd.db")),
    *("--auth", "glue", "--glue-secret-file", str(SECRET_FILE)),
    *("--jupyter-files", "contents"),
    # {owner} and {server} come from each room's path. Each server is shown
    # its own glue secret, never a token that would open the others.
    *("--jupyter-url", users_url + "/{owner}/{server}/"),
    *("--jupyter-credentials", "glue"),
]
# Run elsewhere (compose.yaml, kubernetes-sidecar.yaml), ysyncd needs nothing
# from the Hub. No "url" either way: browsers never reach ysyncd, only
# single-user servers do.
c.JupyterHub.services = (
    []
    if os.environ.get("EXAMPLE_YSYNCD_URL")
    else [{"name": "ysyncd", "command": YSYNCD_COMMAND}]
)
c.JupyterHub.load_roles = [
    # Users may share their servers with others, named (POST
    # /hub/api/shares/{user}/ needs both scopes) or by a share code.
    {"name": "user", "scopes": ["self", "shares!user", "read:users:name"]},
]

# --- single-user servers, with the ysyncd.jupyter extension ---------------------------


def glue_secret(spawner: Any) -> str:
    """This server's own glue secret: it opens this server's rooms only, so
    code a user runs in their server cannot reach anyone else's rooms."""
    return namespace_secret(SECRET_FILE.read_bytes(), spawner.user.name, spawner.name)


c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.environment = {"YSYNCD_URL": YSYNCD_URL, "YSYNCD_GLUE_SECRET": glue_secret}
c.Spawner.args = [
    # How soon a single-user server hears of a share or an unshare ...
    f"--HubOAuth.cache_max_age={AUTH_CACHE_SECONDS}",
    # ... and how often open room sockets are checked again: once a share is
    # withdrawn, its user's sockets close (4403) within about twice this.
    f"--YsyncdExtension.recheck_seconds={AUTH_CACHE_SECONDS}",
]
if os.getuid() == 0:  # a try-out in a container runs everything as root
    c.Spawner.args.append("--allow-root")
