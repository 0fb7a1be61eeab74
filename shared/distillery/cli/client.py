"""`distillery` commands that talk to the gateway: submit, list, status, results, cancel, retry,
delete, queue, datasets.

The server and token come from `--url`/`DISTILLERY_URL` and `--token`/`DISTILLERY_TOKEN`. Errors
from the server (a 422 names each bad field) are printed readably and exit non-zero.
"""

from __future__ import annotations

import tarfile
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from distillery.cli.consoles import make_console
from distillery.cli.dataset import datasets_app
from distillery.cli.tables import results_table

DEFAULT_URL = "http://localhost:8000"
FINISHED = ("succeeded", "failed", "cancelled", "partial")

console = make_console()
err_console = make_console(stderr=True)

UrlOpt = Annotated[
    str, typer.Option("--url", envvar="DISTILLERY_URL", help="gateway URL", show_default=True)
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="DISTILLERY_TOKEN", help="API token", show_default=False),
]


class GatewayError(Exception):
    """An error answer from the gateway, or no answer; `str()` is what the user reads."""


def format_error(response: httpx.Response) -> str:
    """`HTTP 422: invalid request` followed by one `  field: message` line per error."""
    head = f"HTTP {response.status_code} {response.reason_phrase}"
    try:
        body = response.json()
    except ValueError:
        return f"{head}: {response.text.strip()[:500]}"
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        lines = [f"{head}:"]
        for e in detail:
            if isinstance(e, dict):
                field = (
                    e.get("field") or ".".join(str(p) for p in e.get("loc", [])[1:]) or "(request)"
                )
                lines.append(f"  {field}: {e.get('msg', e)}")
            else:
                lines.append(f"  {e}")
        return "\n".join(lines)
    return f"{head}: {detail}"


class Gateway:
    """A thin httpx client for the gateway's REST API."""

    def __init__(self, url: str, token: str | None, timeout: float = 120) -> None:
        if not token:
            raise GatewayError("no API token: pass --token or set DISTILLERY_TOKEN")
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        #: path -> (ETag, body) of the last answer `get_fresh` had for it.
        self._tagged: dict[str, tuple[str, Any]] = {}

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise GatewayError(f"cannot reach the gateway at {self.url}: {e}") from None
        if response.is_error:
            raise GatewayError(format_error(response))
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def get_fresh(self, path: str) -> Any:
        """GET `path` sending the ETag of the last answer; `304 Not Modified` (nothing changed,
        the gateway did one small query) returns that answer again. For polling."""
        tagged = self._tagged.get(path)
        headers = {"If-None-Match": tagged[0]} if tagged else {}
        response = self._send("GET", path, headers=headers)
        if response.status_code == 304 and tagged:
            return tagged[1]
        body = response.json()
        if etag := response.headers.get("etag"):
            self._tagged[path] = (etag, body)
        return body

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


def _gateway(url: str, token: str | None) -> Gateway:
    try:
        return Gateway(url, token)
    except GatewayError as e:
        _fail(str(e), code=2)
        raise  # unreachable


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except GatewayError as e:
        _fail(str(e))


def _ts(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else "—"


def _progress(stage: dict[str, Any]) -> str:
    parts = []
    if stage.get("epochs"):
        parts.append(f"epoch {stage['epoch']}/{stage['epochs']}")
    if stage.get("steps"):
        parts.append(f"step {stage['step']}/{stage['steps']}")
    return ", ".join(parts) or "—"


# ---------------------------------------------------------------------------------- rendering


def stages_table(exp: dict[str, Any]) -> Table:
    table = Table(title=f"{exp['name']} {exp['id']}: {exp['status']}", title_justify="left")
    for col in ("stage", "status", "progress", "worker", "latest metrics", "wandb"):
        table.add_column(col)
    for s in exp["stages"]:
        latest = s.get("latest_metrics") or {}
        values = latest.get("values") or {}
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, int | float) else f"{k}={v}"
            for k, v in list(values.items())[:4]
        )
        wandb = s.get("wandb") or {}
        table.add_row(
            s["name"],
            s["status"] + (" (error below)" if s.get("error") else ""),
            _progress(s),
            s.get("worker_id") or "—",
            shown or "—",
            wandb.get("url") or wandb.get("id") or "—",
        )
    return table


def print_errors(errors: dict[str, str | None]) -> None:
    """Each error whole, under the table that says which row failed (a table cell would cut or
    wrap it)."""
    for name, error in errors.items():
        if error:
            console.print(f"[bold red]{name}:[/] {error}", highlight=False, soft_wrap=True)


def print_experiment(exp: dict[str, Any]) -> None:
    """The stages table, then each failed stage's error in full; a sweep's members after."""
    console.print(stages_table(exp))
    print_errors({s["name"]: s.get("error") for s in exp["stages"]})
    sweep = exp.get("sweep") or {}
    if sweep.get("role") == "sweep":
        console.print(members_table(sweep))
    elif sweep:
        console.print(f"part of sweep {exp.get('parent_id')} ({_part_text(sweep)})")


def _part_text(part: dict[str, Any]) -> str:
    if part.get("role") == "child":
        return f"child {part.get('configuration')} seed {part.get('seed')}"
    if part.get("role") == "matched":
        return f"compute-matched baseline {part.get('configuration')} seed {part.get('seed')}"
    return f"shared {part.get('role')} {part.get('key') or ''}".strip()


def members_table(sweep: dict[str, Any]) -> Table:
    """A sweep's members: part, status and stages, under the counts by status."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted((sweep.get("counts") or {}).items()))
    table = Table(title=f"members: {counts or 'none'}", title_justify="left")
    for col in ("member", "id", "status", "stages"):
        table.add_column(col)
    for m in sweep.get("members") or []:
        stages = ", ".join(f"{s['name']} {s['status']}" for s in m["stages"])
        table.add_row(_part_text(m), m["id"], m["status"], stages)
    return table


# ----------------------------------------------------------------------------------- commands


def submit(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="experiment spec")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the id")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="validate here and print the stages; submit nothing")
    ] = False,
) -> None:
    """Submit an experiment spec to the shared queue."""
    try:
        raw = yaml.safe_load(spec_path.read_text())
    except FileNotFoundError:
        _fail(f"{spec_path}: no such file")
    except yaml.YAMLError as e:
        _fail(f"{spec_path}: not valid YAML: {e}")
    if not isinstance(raw, dict):
        _fail(f"{spec_path}: a spec is a mapping")
    if dry_run:
        from distillery.cli.run import print_plan
        from distillery.spec import SpecError, load_spec

        try:
            print_plan(load_spec(spec_path))
        except SpecError as e:
            _fail(str(e), 2)
        return
    exp = _call(_gateway(url, token).post, "/experiments", json=raw)
    if quiet:
        print(exp["id"])
        return
    sweep = exp.get("sweep") or {}
    if sweep.get("role") == "sweep":
        counts = (sweep.get("plan") or {}).get("stage_counts") or {}
        shared = ", ".join(f"{kind} {n} (of {m})" for kind, (n, m) in counts.items())
        console.print(
            f"submitted sweep [bold]{exp['id']}[/] ({exp['name']}): "
            f"{len(sweep.get('members') or [])} member experiments; stages to train: {shared}",
            highlight=False,
        )
        return
    stages = " → ".join(s["name"] for s in exp["stages"])
    console.print(f"submitted [bold]{exp['id']}[/] ({exp['name']}): {stages}", highlight=False)


def list_experiments(
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, ...")] = None,
    owner: Annotated[str | None, typer.Option(help="owner's user name")] = None,
    limit: int = 20,
    offset: int = 0,
    members: Annotated[
        bool, typer.Option("--members", help="also list the members of sweeps")
    ] = False,
) -> None:
    """Everyone's experiments, newest first (a sweep as one row, its parent; `--members` lists
    its members too)."""
    params: dict[str, Any] = {"limit": limit, "offset": offset, "top_level": not members}
    if status:
        params["status"] = status
    if owner:
        params["owner"] = owner
    page = _call(_gateway(url, token).get, "/experiments", params=params)
    table = Table(
        title=f"experiments {offset + 1}-{offset + len(page['items'])} of {page['total']}",
        title_justify="left",
    )
    table.add_column("id", no_wrap=True)
    for col in ("name", "owner", "status", "stages", "created"):
        table.add_column(col)
    for e in page["items"]:
        pending_cancel = e["cancel_requested"] and e["status"] not in FINISHED
        table.add_row(
            e["id"],
            e["name"],
            e.get("owner") or "—",
            e["status"] + (" (cancel requested)" if pending_cancel else ""),
            " ".join(f"{s['name']}:{s['status']}" for s in e["stages"]),
            _ts(e["created_at"]),
        )
    console.print(table)


def status(
    experiment_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow until it ends")] = False,
    interval: Annotated[float, typer.Option(help="seconds between polls with --watch")] = 2.0,
) -> None:
    """An experiment's stages, progress and latest metrics; `--watch` shows live progress bars."""
    gw = _gateway(url, token)
    exp = _call(gw.get_fresh, f"/experiments/{experiment_id}")
    if not watch:
        print_experiment(exp)
        return
    exp = _watch(gw, experiment_id, exp, interval)
    print_experiment(exp)
    if exp["status"] != "succeeded":
        raise typer.Exit(1)


def stage_fraction(stage: dict[str, Any]) -> tuple[float, float | None]:
    """(done, total) optimizer steps of a stage (1-based epoch and step); total None = unknown."""
    if stage["status"] == "succeeded":
        return 1.0, 1.0
    epochs, steps = stage.get("epochs") or 0, stage.get("steps") or 0
    if stage["status"] == "queued" or not epochs:
        return 0.0, None
    if not steps:
        return float(max(stage.get("epoch", 0) - 1, 0)), float(epochs)
    done = (max(stage.get("epoch", 0), 1) - 1) * steps + (stage.get("step") or 0)
    return float(min(done, epochs * steps)), float(epochs * steps)


def _watch(gw: Gateway, experiment_id: str, exp: dict[str, Any], interval: float) -> dict[str, Any]:
    columns = (
        TextColumn("{task.fields[stage]:<8}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {
            s["name"]: progress.add_task("", total=None, stage=s["name"], info=s["status"])
            for s in exp["stages"]
        }
        while True:
            for s in exp["stages"]:
                completed, total = stage_fraction(s)
                progress.update(
                    tasks[s["name"]],
                    total=total,
                    completed=completed,
                    info=_progress(s) if s["status"] == "running" else s["status"],
                )
            if exp["status"] in FINISHED:
                break
            time.sleep(interval)
            exp = _call(gw.get_fresh, f"/experiments/{experiment_id}")
    return exp


def results(
    experiment_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """The comparison table: teacher, student baseline, distilled student (a sweep: its
    configurations' gains with their intervals)."""
    exp = _call(_gateway(url, token).get, f"/experiments/{experiment_id}")
    res = exp.get("results")
    if not res:
        _fail(f"experiment {experiment_id} has no results yet (status {exp['status']})")
    if res.get("kind") == "sweep":  # a sweep's comparison: configurations x seeds
        from distillery.research.summary import sweep_markdown

        console.print(sweep_markdown(res), highlight=False)
    else:
        console.print(results_table(res))
    links = [a for a in exp.get("artifacts", []) if a["kind"] in ("report", "results", "profile")]
    if links:
        table = Table(title="reports (links valid for an hour)", title_justify="left")
        for col in ("kind", "stage", "link"):
            table.add_column(col, overflow="fold")
        for a in links:
            table.add_row(a["kind"], a.get("stage") or "—", a["url"])
        console.print(table)


def cancel(
    experiment_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Cancel an experiment (owner or admin): queued stages never start, a running one stops."""
    exp = _call(_gateway(url, token).post, f"/experiments/{experiment_id}/cancel")
    console.print(f"{exp['id']}: {exp['status']}", highlight=False)


def retry(
    experiment_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Run a failed or cancelled experiment again (owner or admin): its failed and cancelled
    stages are queued and resume from their last checkpoints; finished stages are kept."""
    exp = _call(_gateway(url, token).post, f"/experiments/{experiment_id}/retry")
    queued = [st["name"] for st in exp["stages"] if st["status"] == "queued"]
    console.print(
        f"{exp['id']}: {exp['status']}; queued again: {', '.join(queued)}", highlight=False
    )


def delete(
    experiment_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Delete a finished or cancelled experiment and its artifacts (owner or admin)."""
    _call(_gateway(url, token).request, "DELETE", f"/experiments/{experiment_id}")
    console.print(f"deleted {experiment_id}", highlight=False)


def share(
    experiment_id: Annotated[str, typer.Argument(metavar="ID")],
    users: Annotated[list[str] | None, typer.Argument(metavar="[USER]...")] = None,
    remove: Annotated[
        bool, typer.Option("--remove", help="take the share back from these users")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Let other users build on an experiment (owner or admin): their specs may then name its
    artifacts, e.g. `teacher.model.checkpoint: artifacts/ID/teacher/model.pt`. With no USER,
    list whom it is shared with."""
    gw = _gateway(url, token)
    path = f"/experiments/{experiment_id}/shares"
    shares = _call(gw.get, path)
    for user in users or []:
        shares = _call(gw.request, "DELETE" if remove else "PUT", f"{path}/{user}")
    shared = ", ".join(shares["users"]) or "nobody"
    console.print(f"{experiment_id}: shared with {shared}", highlight=False)


def queue(
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, limit: int = 50, offset: int = 0
) -> None:
    """The team's shared queue: what runs and what waits, for whom, where, since when (`limit`
    entries from `offset`, in enqueue order)."""
    q = _call(_gateway(url, token).get, "/queue", params={"limit": limit, "offset": offset})
    title = f"{q['running']} running, {q['queued']} queued"
    if len(q["entries"]) < q["total"]:
        title += f" (showing {len(q['entries'])} of {q['total']} from #{offset + 1})"
    table = Table(title=title, title_justify="left")
    for col in ("experiment", "owner", "stage", "queue", "status", "worker", "since", "progress"):
        table.add_column(col)
    for e in q["entries"]:
        since = e["started_at"] if e["status"] == "running" else e["enqueued_at"]
        table.add_row(
            f"{e['experiment_name']} ({e['experiment_id'][:8]})",
            e.get("owner") or "—",
            e["stage"],
            e["queue"],
            e["status"],
            e.get("worker_id") or "—",
            _ts(since),
            _progress(e),
        )
    console.print(table)


# ----------------------------------------------------------------------------------- datasets

# The platform's commands join the local ones in `distillery datasets` (distillery.cli.dataset).


def _splits(ds: dict[str, Any]) -> list[tuple[str, Any]]:
    """(split, images) with train and val first (JSONB does not keep key order); the summary's
    other entries (`check`: the check's peak memory and time) are not splits."""
    summary = {
        k: v for k, v in (ds.get("summary") or {}).items() if isinstance(v, dict) and "images" in v
    }
    order = sorted(summary, key=lambda k: (k != "train", k != "val", k))
    return [(k, summary[k]["images"]) for k in order]


def _dataset_line(ds: dict[str, Any]) -> str:
    images = ", ".join(f"{split}: {n}" for split, n in _splits(ds))
    return f"{ds['id']} {ds['name']} ({ds['format']}) {ds['status']}" + (
        f" — {images} images" if images else ""
    )


NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="return once accepted (status checking); do not wait")
]
IntervalOpt = Annotated[float, typer.Option(help="seconds between polls while it is checked")]


def _settle(gw: Gateway, ds: dict[str, Any], wait: bool, interval: float) -> None:
    """Print the dataset; unless `wait` is off, poll `GET /datasets/{id}` (a progress line)
    until its check ends: exit 1 with the whole error if it is invalid."""
    if wait and ds["status"] == "checking":
        with console.status(f"checking {ds['id']} {ds['name']} …") as line:
            t0 = time.monotonic()
            while ds["status"] == "checking":
                time.sleep(interval)
                ds = _call(gw.get_fresh, f"/datasets/{ds['id']}")
                line.update(f"checking {ds['id']} {ds['name']} … {time.monotonic() - t0:.0f} s")
    console.print(_dataset_line(ds), highlight=False)
    if ds["status"] == "invalid":
        err_console.print("[bold red]invalid:[/]", markup=True, end=" ")
        err_console.print(ds.get("error") or "", markup=False, highlight=False)
        raise typer.Exit(1)


@datasets_app.command("upload")
def datasets_upload(
    path: Annotated[Path, typer.Argument(help="folder in the native layout")],
    name: Annotated[str, typer.Option(help="dataset name")],
    format: Annotated[str, typer.Option("--format", help="cityscapes or bdd100k")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    no_wait: NoWaitOpt = False,
    interval: IntervalOpt = 1.0,
) -> None:
    """Pack a local dataset folder as .tar.gz and upload it; wait while a checker on the
    platform checks it (ready, or invalid with the error: exit 1)."""
    if not path.is_dir():
        _fail(f"{path}: not a folder")
    gw = _gateway(url, token)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / f"{path.name or 'dataset'}.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            for p in sorted(path.iterdir()):
                tf.add(p, arcname=p.name)
        console.print(f"uploading {archive.stat().st_size / 1e6:.1f} MB …", highlight=False)
        with open(archive, "rb") as f:
            ds = _call(
                gw.post,
                "/datasets",
                data={"name": name, "format": format},
                files={"file": (archive.name, f, "application/gzip")},
            )
    _settle(gw, ds, not no_wait, interval)


@datasets_app.command("register")
def datasets_register(
    prefix: Annotated[str, typer.Argument(help="prefix in the datasets bucket")],
    name: Annotated[str, typer.Option(help="dataset name")],
    format: Annotated[str, typer.Option("--format", help="cityscapes or bdd100k")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    no_wait: NoWaitOpt = False,
    interval: IntervalOpt = 1.0,
) -> None:
    """Register a dataset that already sits in the datasets bucket under PREFIX; wait while it
    is checked (ready, or invalid with the error: exit 1)."""
    gw = _gateway(url, token)
    ds = _call(gw.post, "/datasets", data={"name": name, "format": format, "prefix": prefix})
    _settle(gw, ds, not no_wait, interval)


@datasets_app.command("list")
def datasets_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Registered datasets, newest first."""
    page = _call(_gateway(url, token).get, "/datasets")
    table = Table(title=f"{page['total']} datasets", title_justify="left")
    table.add_column("id", no_wrap=True)
    for col in ("name", "format", "status", "images", "owner", "created"):
        table.add_column(col)
    for d in page["items"]:
        images = " ".join(f"{split}:{n}" for split, n in _splits(d))
        table.add_row(
            d["id"],
            d["name"],
            d["format"],
            d["status"] + (" (error below)" if d.get("error") else ""),
            images or "—",
            d.get("owner") or "—",
            _ts(d["created_at"]),
        )
    console.print(table)
    print_errors({d["name"]: d.get("error") for d in page["items"]})


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `distillery` app."""
    app.command("submit")(submit)
    app.command("list")(list_experiments)
    app.command("status")(status)
    app.command("results")(results)
    app.command("cancel")(cancel)
    app.command("retry")(retry)
    app.command("delete")(delete)
    app.command("share")(share)
    app.command("queue")(queue)
