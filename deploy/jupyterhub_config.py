"""JupyterHub for a class, on one machine: every student logs in with a name of their
choice (and the class's shared password, if set) and lands on `camwidget app`'s page,
served by Voila in their own single-user server (a kernel each).

    pip install "camwidget[app]" jupyterhub && npm install -g configurable-http-proxy
    CAMWIDGET_CLASS_PASSWORD=... jupyterhub -f deploy/jupyterhub_config.py

For hundreds of students, the same settings go into Zero to JupyterHub on Kubernetes
(KubeSpawner: `singleuser.defaultUrl`, and the notebook in the image), each student on a
pod of their own. Tried here with JupyterHub 6.1 and its SimpleLocalProcessSpawner.
"""

import os
import sys
from pathlib import Path

import camwidget

c = get_config()  # noqa: F821 (JupyterHub's config loader provides it)

APP = Path(camwidget.__file__).parent / "notebooks"  # app.ipynb ships with the package

c.JupyterHub.bind_url = os.environ.get("CAMWIDGET_HUB_URL", "http://127.0.0.1:8000")
c.JupyterHub.authenticator_class = "dummy"  # any name; the shared password below, if set
c.DummyAuthenticator.password = os.environ.get("CAMWIDGET_CLASS_PASSWORD", "")
c.JupyterHub.spawner_class = "simple"  # processes of the hub's own user, a home each in /tmp
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.notebook_dir = str(APP)
c.Spawner.default_url = "/voila/render/app.ipynb"  # the panel alone, no code
if hasattr(os, "geteuid") and os.geteuid() == 0:  # a hub run as root spawns root's servers
    c.Spawner.args = ["--ServerApp.allow_root=True"]
c.Spawner.environment = {  # what the app serves (see camwidget.widget.classroom)
    "CAMWIDGET_MODEL": os.environ.get("CAMWIDGET_MODEL", "efficientnet_lite0"),
    "CAMWIDGET_MAX_UPLOAD_MB": "20",
    "OMP_NUM_THREADS": "1",  # many kernels on few cores
}
c.Spawner.mem_limit = "1G"  # enforced by spawners that can (KubeSpawner, SystemdSpawner)
c.JupyterHub.services = [  # students who leave: their servers stop after 10 idle minutes
    {
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=600"],
    }
]
c.JupyterHub.load_roles = [
    {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }
]
