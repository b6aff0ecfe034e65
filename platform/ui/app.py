"""The ASGI application: the JSON API over the page views (OpenAPI at /api/openapi.json), the pages and their
assets, every request passing the access middleware of `auth`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import ArtifactError, BitsmithError, NotFoundError, SpecError, StoreError, UsageError
from . import actions, files, graph, sweepviews, views
from .auth import Access, middleware
from .files import DownloadRefused
from .pages import PAGES, page_html
from .runquery import MAX_LIMIT, RunQuery, parse_metric_filter

STATIC = Path(__file__).parent / "static"
MAX_FILTERS = 20


def status_of(exc: BitsmithError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, DownloadRefused):
        return 403
    if isinstance(exc, (UsageError, SpecError)):
        return 400
    if isinstance(exc, StoreError):
        return 503
    if isinstance(exc, ArtifactError):
        return 409
    return 500


def create_app(settings: Any, access: Access = Access(), db: Any = None) -> FastAPI:
    """The app over `settings`' store and artifact root; write routes exist only when `access` is writable."""
    from .. import store

    db = db if db is not None else store.open_database(settings.db_url)
    app = FastAPI(title="bitsmith", version=_version(), openapi_url="/api/openapi.json", docs_url=None,
                  redoc_url=None, description="Read-only JSON API over the bitsmith store"
                  + ("; write routes enabled" if access.writable else ""))
    app.middleware("http")(middleware(access))

    @app.exception_handler(BitsmithError)
    async def _bitsmith_error(request: Request, exc: BitsmithError) -> JSONResponse:
        body = {"error": exc.message}
        if exc.hint:
            body["hint"] = exc.hint
        return JSONResponse(body, status_code=status_of(exc))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _api_routes(app, db, settings, access)
    if access.writable:
        _write_routes(app, db, settings)
    _page_routes(app, access)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsmith")
    except PackageNotFoundError:
        return "0"


def _checked_filters(metric: list[str], where: list[str]) -> None:
    if len(metric) > MAX_FILTERS or len(where) > MAX_FILTERS:
        raise UsageError(f"filters: expected at most {MAX_FILTERS} metric and {MAX_FILTERS} where filters")


def _api_routes(app: FastAPI, db: Any, settings: Any, access: Access) -> None:
    @app.get("/api/info", tags=["server"])
    def info() -> dict[str, Any]:
        """What this server is: version, whether writes are enabled, the store's kind."""
        return {"version": app.version, "writable": access.writable, "store": "sqlite" if db.is_sqlite else "sql"}

    @app.get("/api/runs", tags=["runs"])
    def runs(kind: str | None = None, status: str | None = None, tag: str | None = None,
             sweep: str | None = None, name: str | None = None,
             metric: list[str] = Query([], description="final-metric filters, e.g. 'test/token_ppl < 50'"),
             sort: str = Query("created_at", description="a column or metric:NAME"), desc: bool = True,
             limit: int = Query(50, ge=1, le=MAX_LIMIT), cursor: str | None = None) -> dict[str, Any]:
        """One page of runs matching the filters, sorted; pass `next_cursor` back as `cursor` for the next."""
        _checked_filters(metric, [])
        q = RunQuery(kind=kind or None, status=status or None, tag=tag or None, sweep_id=sweep or None,
                     name_contains=name or None, metric_filters=tuple(parse_metric_filter(m) for m in metric),
                     sort=sort, descending=desc, limit=limit, cursor=cursor or None)
        return views.runs_page(db, q)

    @app.get("/api/runs/{ref}", tags=["runs"])
    def run(ref: str) -> dict[str, Any]:
        """A run: spec, code version, environment, inputs/outputs, events, series, reproduction verdicts."""
        return views.run_page(db, ref)

    @app.get("/api/runs/{ref}/metrics", tags=["runs"])
    def run_metrics(ref: str, key: str | None = None) -> dict[str, Any]:
        """The run's stepped metric series as [[step, value], ...] (thinned past 5,000 points) and their counts."""
        return views.metric_series(db, ref, key)

    @app.get("/api/runs/{ref}/log", tags=["runs"])
    def run_log(ref: str, offset: int = Query(0, ge=0, le=1 << 40)) -> dict[str, Any]:
        """A chunk of the run's log from byte `offset`; `done` once the run ended and the log was read."""
        return views.log_chunk(db, settings, ref, offset)

    @app.get("/api/compare", tags=["runs"])
    def compare(run: list[str] = Query(..., description="run ids (1 to 12)")) -> dict[str, Any]:
        """Spec fields that differ, final metrics side by side, each run's stepped series."""
        return views.compare_page(db, run)

    @app.get("/api/artifacts", tags=["artifacts"])
    def artifacts(kind: str | None = None,
                  where: list[str] = Query([], description="FIELD OP VALUE filters, e.g. 'meta.bits<=4'"),
                  limit: int = Query(50, ge=1, le=500), cursor: str | None = None) -> dict[str, Any]:
        """Artifacts matching every `where` filter (the CLI's --where language), newest first; pass
        `next_cursor` back as `cursor` for the next page."""
        _checked_filters([], where)
        return views.artifacts_page(db, kind=kind or None, where=where, limit=limit, cursor=cursor or None)

    @app.get("/api/artifacts/{ref}", tags=["artifacts"])
    def artifact(ref: str) -> dict[str, Any]:
        """An artifact: metadata, size, producer, consumers."""
        return views.artifact_page(db, ref)

    @app.get("/api/artifacts/{digest}/files", tags=["artifacts"])
    def artifact_files(digest: str) -> dict[str, Any]:
        """The regular files of a directory artifact (relative paths and sizes)."""
        record = views.artifact_page(db, digest)["artifact"]
        return {"digest": record["digest"], "files": files.list_files(db, settings.artifact_root, record["digest"])}

    @app.get("/api/artifacts/{digest}/download", tags=["artifacts"], response_class=FileResponse)
    def download(digest: str, path: str | None = None) -> FileResponse:
        """The bytes of a file artifact (or of `path` inside a directory artifact); never outside the root."""
        file, record = files.object_file(db, settings.artifact_root, digest, path or None)
        name = Path(path).name if path else (record.name or record.kind or record.digest[:12]).replace("/", "_")
        return FileResponse(file, media_type="application/octet-stream", filename=name)

    @app.get("/api/lineage", tags=["lineage"])
    def lineage(run: str | None = None, artifact: str | None = None,
                direction: Literal["up", "down", "both"] = "both", depth: int = Query(6, ge=1, le=graph.MAX_DEPTH),
                collapse: int = Query(8, ge=1, le=1000)) -> dict[str, Any]:
        """The laid-out lineage graph around one run or artifact; siblings past `collapse` become one node."""
        return graph.lineage_graph(db, run=run, artifact=artifact, direction=direction, depth=depth,
                                   collapse=collapse)

    @app.get("/api/lineage/export", tags=["lineage"], response_class=Response)
    def lineage_export(format: Literal["svg", "dot", "mermaid"], run: str | None = None,
                       artifact: str | None = None, direction: Literal["up", "down", "both"] = "both",
                       depth: int = Query(6, ge=1, le=graph.MAX_DEPTH),
                       collapse: int = Query(8, ge=1, le=1000)) -> Response:
        """The same graph as SVG, Graphviz dot or Mermaid text."""
        text, media = graph.export(db, format, run=run, artifact=artifact, direction=direction, depth=depth,
                                   collapse=collapse)
        ext = {"svg": "svg", "dot": "dot", "mermaid": "mmd"}[format]
        return Response(text, media_type=media,
                        headers={"content-disposition": f'attachment; filename="lineage.{ext}"'})

    @app.get("/api/sweeps", tags=["sweeps"])
    def sweeps(limit: int = Query(50, ge=1, le=500), cursor: str | None = None) -> dict[str, Any]:
        """Sweeps, newest first, with their child counts; pass `next_cursor` back as `cursor` for the next page."""
        return sweepviews.sweeps_list(db, limit=limit, cursor=cursor or None)

    @app.get("/api/sweeps/{ref}", tags=["sweeps"])
    def sweep(ref: str) -> dict[str, Any]:
        """A sweep's children with their parameters, objectives and Pareto membership."""
        return sweepviews.sweep_page(db, ref)

    @app.get("/api/searches/{ref}", tags=["sweeps"])
    def search(ref: str) -> dict[str, Any]:
        """A search run's bits-per-layer heat map, fitness trajectory and allocation-vs-uniform table."""
        return sweepviews.search_page(db, settings.artifact_root, ref)


def _write_routes(app: FastAPI, db: Any, settings: Any) -> None:
    @app.post("/api/runs/{ref}/cancel", tags=["write"])
    def cancel(ref: str) -> dict[str, Any]:
        """Ask a queued or running run to stop."""
        return actions.cancel_run(db, ref)

    @app.post("/api/runs/{ref}/tags", tags=["write"])
    def tags(ref: str, add: list[str] = Body([], max_length=64), remove: list[str] = Body([], max_length=64)
             ) -> dict[str, Any]:
        """Add and remove tags of a run."""
        return actions.change_tags(db, ref, add, remove)

    @app.post("/api/runs/{ref}/reproduce", tags=["write"])
    def reproduce(ref: str, executor: Literal["local", "ray"] = "local") -> dict[str, Any]:
        """Start `bitsmith reproduce` of a succeeded run in the background."""
        return actions.reproduce_run(db, settings, ref, executor)

    @app.post("/api/sweeps/{ref}/resume", tags=["write"])
    def resume(ref: str, executor: Literal["local", "ray"] = "local") -> dict[str, Any]:
        """Start `bitsmith sweep resume` in the background."""
        return actions.resume_sweep(db, settings, ref, executor)


def _page_routes(app: FastAPI, access: Access) -> None:
    for path, name in PAGES:
        def handler(request: Request, _name: str = name) -> Response:
            return page_html(_name, dict(request.path_params), writable=access.writable)

        app.add_api_route(path, handler, methods=["GET"], include_in_schema=False, response_class=Response)
