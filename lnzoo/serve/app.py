"""The FastAPI app behind ``lnzoo serve``.

Models are loaded once, when the app is created: a model that fails to load stops it there, with the
reason. Each request's uploads are checked with PIL before anything is predicted, written to a temporary
folder that is removed when the request ends, and predicted on as one :class:`~lnzoo.data.samples.Sample`
through :class:`lnzoo.predict.Ensemble`: the same path as ``lnzoo predict``. The cascade routes a node
through its stages with :class:`lnzoo.predict.Cascade`, as ``lnzoo predict --cascade`` does (each
stage's call of its main task decides whether it goes on). Every call, on the page, in the API and in the cascade's
routing, is the one ``lnzoo predict`` makes: :meth:`lnzoo.predict.Ensemble.calls`, the calibrated probability against
the model's stored operating threshold.
"""
from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lnzoo.errors import LnzooError, UsageError
from lnzoo.serve.uploads import (IMAGE_FORMATS, RequestError, Submission, check_declared_size, check_input_files,
                                 read_form, write_sample)

FULL_VIEWS = ("full", "2d")      # the views a 'roi' view is cropped from (the manifest's "path" column)
TEXT_FIELDS = ("box", "gradcam")


# -- the models, loaded once --------------------------------------------------------------------------------------
@dataclass
class ServedModel:
    """One model (its members averaged) or one cascade stage, with what it says about itself."""

    sources: list[Path]
    ensemble: Any                     # lnzoo.predict.Ensemble
    info: dict[str, Any]              # lnzoo.bundle.served_info of its sources
    cam_model: Any = None             # with the ONNX engine: the torch model Grad-CAM runs on, loaded on first use

    @property
    def main(self) -> str:
        return self.ensemble.main

    @property
    def views(self) -> list[str]:
        return list(self.ensemble.views)

    @property
    def covariates(self) -> list[str]:
        """The text fields the models read besides images: covariates and report text."""
        names: list[str] = []
        for m in self.ensemble.members:
            names += [c for c in (m.inputs.text_columns if m.inputs else []) if c not in names]
        return names

    @property
    def file_inputs(self) -> dict[str, Any]:
        """{column: fitted input} of the files the inputs read from manifest cells (a mask; the image a mask
        outlines when no view uploads it, as in a model without views): uploaded files."""
        from lnzoo.data.samples import VIEW_COLUMN

        by_views = {VIEW_COLUMN.get(v, v) for v in self.views}  # columns a view's upload fills
        out: dict[str, Any] = {}
        for m in self.ensemble.members:
            for item in m.inputs or []:
                if getattr(item.kind, "reads", "file") != "text":
                    for column in getattr(item.kind, "columns", None) or [item.kind.column]:
                        if column == item.kind.column or column not in by_views:
                            out.setdefault(column, item)
        return out

    def inputs_used(self, sample) -> list[str] | None:
        """The inputs besides the views that the sample gives (None: the model has none)."""
        extra = next((m.inputs for m in self.ensemble.members if m.inputs), None)
        return None if extra is None else extra.given(sample)


def load_model(sources: Sequence[Path], host, engine: str = "torch") -> ServedModel:
    """Load the checkpoints of ``sources`` (averaged) and read their model info; every failure is an LnzooError."""
    from lnzoo.predict import Ensemble

    sources = [Path(s) for s in sources]
    ensemble = _loading(sources, lambda: Ensemble(sources, host, engine))
    keep_uploads_in_memory(ensemble)
    return ServedModel(sources, ensemble, _loading(sources, lambda: ensemble.info))


def keep_uploads_in_memory(ensemble) -> None:
    """What an input kind derives from an upload (a mask's morphology) comes from a patient's images and must not
    outlive the request's temporary folder on disk: each kind's optional ``keep_in_memory()`` is called."""
    for m in ensemble.members:
        for item in m.inputs or []:
            if callable(hook := getattr(item.kind, "keep_in_memory", None)):
                hook()


def _loading(sources: Sequence[Path], load):
    """``load()``, with any failure an LnzooError naming the model (the server stops before it listens)."""
    try:
        return load()
    except LnzooError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise LnzooError(f"{', '.join(map(str, sources))}: cannot load the model ({type(exc).__name__}: {exc})"
                         ) from None


@dataclass
class Server:
    """Everything a request needs: the models (one, or the cascade's stages), the limits and the plugin host."""

    stages: list[ServedModel]
    chain: Any                        # the lnzoo.predict.Cascade of the stages; None for one model
    max_upload_mb: float
    max_side: int
    host: Any = None
    # every prediction on one worker thread, one at a time (torch uses every core anyway): the thread that loaded
    # the models (build_server), so the process has one OpenMP thread team (see predicting_thread)
    worker: ThreadPoolExecutor = field(default_factory=lambda: predicting_thread())

    @property
    def max_bytes(self) -> int:
        return round(self.max_upload_mb * 2**20)

    @property
    def cascade(self) -> bool:
        return len(self.stages) > 1

    @property
    def views(self) -> list[str]:
        views: list[str] = []
        for s in self.stages:
            views += [v for v in s.views if v not in views]
        return views

    @property
    def file_fields(self) -> list[str]:
        """One file field per view; a 'roi' view is cropped from the full image's upload when there is one."""
        views = self.views
        roi_from_full = any(v in views for v in FULL_VIEWS)
        return [v for v in views if not (v == "roi" and roi_from_full)]

    @property
    def roi_source(self) -> str | None:
        """The file field a 'roi' view's box is drawn on (None: no 'roi' view)."""
        if "roi" not in self.views:
            return None
        return next((v for v in FULL_VIEWS if v in self.views), "roi")

    @property
    def required_view(self) -> str | None:
        """The view every request must give (None: a model without views, which needs one of its inputs)."""
        return self.stages[0].views[0] if self.stages[0].views else None

    @property
    def covariates(self) -> list[str]:
        names: list[str] = []
        for s in self.stages:
            names += [c for c in s.covariates if c not in names]
        return names

    @property
    def input_files(self) -> list[str]:
        """One file field per input that reads a file (a mask for morphology), named by the column it reads."""
        names: list[str] = []
        for s in self.stages:
            names += [c for c in s.file_inputs if c not in names]
        return names

    def input_kinds(self) -> list[tuple[str, Any]]:
        """(file field, fitted input) of every stage: each checks its upload."""
        return [(c, item) for s in self.stages for c, item in s.file_inputs.items()]

    @property
    def uploads(self) -> int:
        """How many files a request may carry."""
        return len(self.file_fields) + len(self.input_files)

    @property
    def accepted(self) -> list[str]:
        text = ["box"] if self.roi_source else []
        return [*self.file_fields, *self.input_files, *text, "gradcam", "frame", *self.covariates]

    def form_description(self) -> dict[str, Any]:
        return {"files": self.file_fields, "required_view": self.required_view, "box_view": self.roi_source,
                "input_files": self.input_files, "covariates": self.covariates, "accepted_fields": self.accepted,
                "max_upload_mb": self.max_upload_mb, "max_side": self.max_side,
                "formats": sorted(IMAGE_FORMATS)}


def predicting_thread() -> ThreadPoolExecutor:
    """The one thread a server loads its models on and predicts on. Torch's CPU ops run on an OpenMP thread team
    per calling thread; with a second team (models loaded on the main thread, predicted on another) the process
    has more OpenMP threads than this machine's 2 CPUs, OpenMP stops spinning between ops, and every op waits for
    its threads to wake: measured 0.72x the bare forward pass at one client, against 0.81x on one thread."""
    return ThreadPoolExecutor(1, thread_name_prefix="lnzoo-predict")


def _load_stages(models: Sequence[Path], cascade: Sequence[Path], host, engine: str
                 ) -> tuple[list[ServedModel], Any]:
    if models:
        return [load_model(list(models), host, engine)], None
    from lnzoo.predict import Cascade

    chain = _loading(list(cascade), lambda: Cascade(list(cascade), host, engine=engine))
    for e in chain.stages:
        keep_uploads_in_memory(e)
    return [ServedModel([src], e, _loading([src], lambda e=e: e.info))
            for src, e in zip(chain.sources, chain.stages)], chain


def build_server(models: Sequence[Path], cascade: Sequence[Path], max_upload_mb: float, max_side: int,
                 host, engine: str = "torch") -> Server:
    if bool(models) == bool(cascade):
        raise UsageError("give either MODEL (one or more) or --cascade S1 --cascade S2 [--cascade S3]")
    if cascade and len(cascade) < 2:
        raise UsageError("--cascade takes two or more models, in stage order")
    if not max_upload_mb > 0 or max_side < 1:
        raise UsageError(f"--max-upload-mb ({max_upload_mb}) and --max-side ({max_side}) must be positive")
    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    worker = predicting_thread()
    try:  # loaded on the thread that will predict
        stages, chain = worker.submit(contextvars.copy_context().run, _load_stages, models, cascade, host,
                                      engine).result()
    except BaseException:
        worker.shutdown(wait=False, cancel_futures=True)
        raise
    server = Server(stages, chain, float(max_upload_mb), int(max_side), host, worker)
    fields = [*server.file_fields, *TEXT_FIELDS, *server.covariates]
    clash = sorted({c for c in server.input_files if c in fields})
    if clash:  # one form field cannot be two things
        worker.shutdown(wait=False)
        raise UsageError(f"the input file column(s) {clash} of the model share a name with its views or text fields "
                         f"{fields}; the server cannot tell them apart in a form")
    return server


# -- predicting -----------------------------------------------------------------------------------------------------
def task_results(model: ServedModel, raw: dict, calibrated: dict) -> dict[str, Any]:
    """Per task: calibrated and raw probabilities of the one sample, and the call at the stored threshold."""
    from lnzoo.decision import call_one

    out = {}
    for task, classes in model.ensemble.tasks.items():
        call = call_one(model.ensemble.operating_point(task), raw[task][0], calibrated[task][0])
        out[task] = {"classes": list(classes), "main": task == model.main,
                     "probabilities": {c: float(v) for c, v in zip(classes, calibrated[task][0])},
                     "raw_probabilities": {c: float(v) for c, v in zip(classes, raw[task][0])},
                     "call": call.cls, "reason": call.reason,
                     "threshold": (model.info.get("thresholds") or {}).get(task)}
    return out


def gradcam(model: ServedModel, sample, host, main: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
    """Grad-CAM of the main task's call (``main``: its :func:`task_results` entry; the class the page shows as
    called, captioned with the rule that called it) on the model's first fold member, per view present:
    {view: base64 PNG}, drawn in memory."""
    from lnzoo.decision import call_one
    from lnzoo.explain import explain_samples, explaining

    if model.cam_model is None:  # the torch model the maps are drawn with (the ONNX engine's loaded once)
        model.cam_model = explaining(model.ensemble, host)[1]
    classes = main["classes"]
    call = call_one(model.ensemble.operating_point(model.main), [main["raw_probabilities"][c] for c in classes],
                    [main["probabilities"][c] for c in classes])
    overlays, _ = explain_samples(model.ensemble, model.cam_model, [sample], tasks=[model.main],
                                  calls=[{model.main: call}])
    return {o.view: base64.b64encode(o.png).decode("ascii") for o in overlays}, None


def stage_entry(server: Server, k: int, sample, raw: dict, calibrated: dict, resolved: list,
                with_gradcam: bool) -> dict[str, Any]:
    """One model's (or cascade stage's) answer for one sample, from its raw and calibrated probabilities."""
    model = server.stages[k]
    tasks = task_results(model, raw, calibrated)
    used = [v for v, p in resolved[0].items() if p is not None]
    entry: dict[str, Any] = {"model": model.info.get("name"), "sources": [str(s) for s in model.sources],
                             "members": len(model.ensemble.members), "main_task": model.main, "tasks": tasks,
                             "views_used": used}
    if (given := model.inputs_used(sample)) is not None:
        entry["inputs_used"] = given
    if with_gradcam and not model.views:
        entry["gradcam"], entry["gradcam_note"] = {}, "no Grad-CAM: this model reads no image view"
    elif with_gradcam:
        cams, note = gradcam(model, sample, server.host, tasks[model.main])
        entry["gradcam"] = cams
        if note:
            entry["gradcam_note"] = note
    if server.cascade:
        entry["stage"] = k + 1
        entry["routed_as"] = tasks[model.main]["call"]  # what Cascade.calls decides on these probabilities
        entry["passes_on"] = server.chain.passing[k] if k < len(server.chain.passing) else None
    return entry


def answer(server: Server, req: Submission) -> dict[str, Any]:
    """Predict on one checked request inside a temporary folder removed on return; each image is decoded once
    (by its check: :func:`lnzoo.data.images.decoded` hands those pixels to every reader of the written file)."""
    from lnzoo.data.images import decoded

    with tempfile.TemporaryDirectory(prefix="lnzoo-serve-") as tmp:
        sample, pixels = write_sample(req, Path(tmp), server)
        with decoded(pixels):
            check_input_files(sample, req, server)
            if server.required_view is None and not server.stages[0].inputs_used(sample):
                raise RequestError(422, "this model reads no image view: give at least one of its inputs (text "
                                        f"fields {server.covariates}, files {server.input_files})")
            if server.cascade:  # the stages walked as lnzoo predict --cascade walks them
                entries = [stage_entry(server, k, sample, raw, cal, resolved, req.gradcam)
                           for k, _, raw, cal, resolved, _ in server.chain.walk([sample])]
            else:
                entries = [stage_entry(server, 0, sample, *server.stages[0].ensemble.predict_both([sample]),
                                       req.gradcam)]
    first = entries[0]
    result = {key: first[key] for key in ("model", "members", "main_task", "tasks", "views_used", "inputs_used",
                                          "gradcam", "gradcam_note") if key in first}
    if server.cascade:
        result["path"] = " > ".join(f"{e['main_task']}:{e['routed_as']}" for e in entries)
        result["stages"] = entries
    return finite(_warned(result))


def _warned(out: dict[str, Any]) -> dict[str, Any]:
    """Served under --allow-modified from files that are not as lnzoo wrote them: every answer says so."""
    from lnzoo.integrity import modified_note

    note = modified_note()
    return {**out, "warning": note} if note else out


def finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities (an undefined metric, say) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# -- the app --------------------------------------------------------------------------------------------------------
def model_description(server: Server) -> dict[str, Any]:
    """GET /api/model: what the served model says about itself (lnzoo.bundle.model_info) and its form."""
    def one(model: ServedModel) -> dict[str, Any]:
        return {**model.info, "sources": [str(s) for s in model.sources], "members": len(model.ensemble.members)}

    out: dict[str, Any] = {"kind": "cascade" if server.cascade else "model", "form": server.form_description()}
    if server.cascade:
        out["stages"] = [one(s) for s in server.stages]
        out["passes_on"] = server.chain.passing
    else:
        out.update(one(server.stages[0]))
    return finite(_warned(out))


def openapi_form(server: Server) -> dict[str, Any]:
    """The multipart body of /api/predict for the OpenAPI docs (its fields depend on the model)."""
    props: dict[str, Any] = {v: {"type": "string", "format": "binary", "description": f"the {v!r} view's image"}
                             for v in server.file_fields}
    if server.roi_source:
        props["box"] = {"type": "string", "example": "40,30,200,180",
                        "description": f"the ROI box x0,y0,x1,y1 in pixels of the {server.roi_source!r} image"}
    props["gradcam"] = {"type": "boolean", "default": True, "description": "Grad-CAM overlays in the answer"}
    props["frame"] = {"type": "integer", "default": 0, "description": "for a DICOM cine loop: the frame to read"}
    props.update({c: {"type": "string", "format": "binary", "description": "the file an input of the model reads "
                      "(a nodule mask for its morphology), optional"} for c in server.input_files})
    props.update({c: {"type": "string", "description": "a text input of the model (a clinical covariate or report "
                                                   "text), optional"} for c in server.covariates})
    required = [] if server.required_view is None else \
        [server.roi_source if server.required_view == "roi" else server.required_view]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": required, "properties": props}}}}}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect):
        # the client closed the connection before its request arrived whole (a closed tab, a lost network): there
        # is no one to answer and nothing was predicted; starlette has closed the partial upload's files
        logging.getLogger("uvicorn.error").info("%s %s: the client disconnected before its request arrived whole; "
                                                "nothing was predicted", request.method, request.url.path)
        return error_response(400, "the client disconnected before its request arrived whole")

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return error_response(exc.status, str(exc))

    @app.exception_handler(LnzooError)
    async def _lnzoo_error(request: Request, exc: LnzooError):
        return error_response(422 if isinstance(exc, UsageError) else 400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(422, "; ".join(str(e.get("msg")) for e in exc.errors()) or "invalid request")


def page_html() -> str:
    return resources.files("lnzoo.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(models: Sequence[Path], cascade: Sequence[Path] = (), max_upload_mb: float = 20.0,
               max_side: int = 8000, plugin_host=None, engine: str = "torch") -> FastAPI:
    """The app serving ``models`` (averaged) or the ``cascade``'s stages; loads them now (LnzooError if one fails).
    ``engine`` is passed on to :class:`lnzoo.predict.Ensemble` ("torch", or "onnx" where it runs ONNX)."""
    from lnzoo import __version__

    server = build_server(list(models), list(cascade), max_upload_mb, max_side, plugin_host, engine)
    page = page_html()
    app = FastAPI(title="lnzoo serve", version=__version__,
                  description="Lymph node ultrasound models: upload a node's images, get every task's probabilities.")
    app.state.server = server
    add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "stages": len(server.stages),
                "members": sum(len(s.ensemble.members) for s in server.stages)}

    @app.get("/api/model")
    def api_model() -> JSONResponse:
        return JSONResponse(model_description(server))

    @app.post("/api/predict", openapi_extra=openapi_form(server))
    async def api_predict(request: Request) -> JSONResponse:
        check_declared_size(request, server)
        form = await request.form(max_files=server.uploads + 1, max_fields=len(server.accepted) + 1)
        try:
            req = await read_form(form, server)
        finally:
            await form.close()
        # in this request's context (--allow-modified, what the CLI set): an executor does not carry it over
        return JSONResponse(await asyncio.get_running_loop().run_in_executor(
            server.worker, contextvars.copy_context().run, answer, server, req))

    return app


def run_server(models: list[Path], cascade: list[Path], host: str = "127.0.0.1", port: int = 8000,
               max_upload_mb: float = 20.0, max_side: int = 8000, plugin_host=None, console=None,
               engine: str = "torch") -> None:
    """Load the models (stopping with their error if one fails), print the URL and serve until SIGINT or SIGTERM.

    uvicorn catches the signal, stops listening and answers the requests it has begun, then raises the signal
    again with the handler it found (``lnzoo serve``'s: the one 'interrupted' line and exit code of every
    command). ``uvicorn.run`` would swallow that as a KeyboardInterrupt, so its Server runs here directly."""
    import uvicorn

    app = create_app(models, cascade, max_upload_mb=max_upload_mb, max_side=max_side, plugin_host=plugin_host,
                     engine=engine)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    what = " > ".join(str(s) for s in cascade) if cascade else ", ".join(str(m) for m in models)
    line = f"lnzoo serve: {what} at {url} (API docs {url}docs); Ctrl-C stops"
    if console is not None:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    else:
        print(line, file=sys.stderr, flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run()
    finally:  # the prediction thread: a prediction in progress finishes, none waiting starts
        app.state.server.worker.shutdown(wait=True, cancel_futures=True)
