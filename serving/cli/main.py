"""The `medserve` command: every command group's module, assembled.

Commands of other packages join through the `medserve.commands` entry-point group (each entry
point names a typer command function): the load-test extra (`pip install medserve[loadtest]`)
adds `medserve loadtest` and `medserve capacity` that way, so serving never imports it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from serving.cli import build, pacs, rollout, serve
from serving.cli.models import models_app
from serving.cli.tenants import tenants_app

COMMANDS_GROUP = "medserve.commands"

app = typer.Typer(
    help="Medserve: inference serving for medical AI models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold request data
)
app.add_typer(models_app, name="models")
app.add_typer(tenants_app, name="tenants")
app.command("rollout")(rollout.rollout)
app.command("build-weights")(build.build_weights)
app.command("build-config")(build.build_config)
app.command("build-triton")(build.build_triton)
app.command("build-observability")(build.build_observability)
app.command("build-k8s")(build.build_k8s)
app.command("samples")(build.samples)
app.command("serve")(serve.serve_cmd)
app.command("pacs")(pacs.pacs)

for _entry in entry_points(group=COMMANDS_GROUP):
    try:
        command = _entry.load()
    except ImportError:  # a plug-in whose package is absent: the rest of medserve still works
        continue
    app.command(_entry.name)(command)
