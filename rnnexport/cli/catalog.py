"""``rnnexport list``: the registered architectures and their I/O contracts."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rnnexport.cli.console import print_table, reported, write_stdout


def list_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the architectures as JSON on stdout.")
    ] = False,
) -> None:
    """List the supported architectures with their I/O contracts (default sizes)."""
    from rnnexport.registry import list_architectures

    with reported():
        specs = list_architectures()
        if as_json:
            data = [
                {
                    "name": s.name,
                    "summary": s.summary,
                    "source": s.source,
                    "notes": list(s.notes),
                    "sizes": s.default_sizes,
                    "templates": {
                        "inputs": [t.to_json() for t in s.inputs],
                        "outputs": [t.to_json() for t in s.outputs],
                    },
                    **s.contract(s.default_config).to_json(),
                }
                for s in specs
            ]
            write_stdout(json.dumps(data, indent=2))
            return
        table = Table(title="rnnexport architectures (symbolic dims are dynamic axes)", title_justify="left")
        table.add_column("name", no_wrap=True, min_width=max(len(s.name) for s in specs))
        for column in ("inputs", "outputs", "sizes (defaults)", "description"):
            table.add_column(column, overflow="fold")
        for s in specs:
            contract = s.contract(s.default_config)
            table.add_row(
                s.name,
                escape("\n".join(f"{t.name}: {t.shape_str()}" for t in contract.inputs)),
                escape("\n".join(f"{t.name}: {t.shape_str()}" for t in contract.outputs)),
                "\n".join(f"{k}={v}" for k, v in s.default_sizes.items()),
                escape("\n".join([s.summary, f"from: {s.source}", *(f"note: {n}" for n in s.notes)])),
            )
        print_table(table, Console(highlight=False))
