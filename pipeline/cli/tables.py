"""The CLI's tables, drawn by rich: aligned columns that fit the terminal, and on anything
that is not a terminal (a pipe, CI, tests) plain text without colour codes or borders, one
row per line, so the output stays greppable. Cells are text, never rich markup, and control
characters from product data (CR, LF, ESC) are shown escaped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import click

# Not a terminal: never wrap a row (a reader or a script gets one row per line).
PLAIN_WIDTH = 100_000


def cell(value: object) -> str:
    """A value as one line of printable text (control characters escaped, e.g. \\r\\n)."""
    text = "-" if value is None else str(value)
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def render_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    header: bool = True,
    indent: int = 0,
    terminal: bool | None = None,
    min_widths: dict[int, int] | None = None,
) -> str:
    import io
    import shutil
    import sys

    from rich import box
    from rich.console import Console
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    tty = sys.stdout.isatty() if terminal is None else terminal
    table = Table(
        box=box.SIMPLE_HEAD if tty else None,
        show_header=header,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if tty else "",
        padding=(0, 2, 0, 0),
    )
    for position, name in enumerate(columns):
        table.add_column(name, overflow="fold", min_width=(min_widths or {}).get(position))
    for row in rows:
        table.add_row(*(Text(cell(v)) for v in row))
    buffer = io.StringIO()
    width = shutil.get_terminal_size().columns if tty else PLAIN_WIDTH
    console = Console(
        file=buffer,
        width=width,
        force_terminal=tty,
        color_system="auto" if tty else None,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )
    console.print(Padding(table, (0, 0, 0, indent)) if indent else table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())


def echo_table(columns: Sequence[str], rows: Iterable[Sequence[object]], **options) -> None:
    click.echo(render_table(columns, rows, **options))
