"""The generation request as the WebUI's FastAPI layer sees it: parsed, typed, or 422.

Unknown fields are ignored, as the WebUI ignores them. Declared fields with the wrong type give
422 ``{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}]}``; for the AUTOMATIC1111
flavours the messages use pydantic v1 wording (as A1111's FastAPI does), for Forge and SD.Next
pydantic v2 wording, and realistic pydantic-2 servers (``full_v2``) add ``input`` and ``url`` as
Forge's FastAPI does. ``null`` for a field means its default.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from pydantic import VERSION as PYDANTIC_VERSION
from pydantic import BaseModel, ConfigDict, ValidationError

# pydantic v2 error type -> (v1 message, v1 type), as A1111 (pydantic 1.x) words them
_V1_WORDING: dict[str, tuple[str, str]] = {
    "int_parsing": ("value is not a valid integer", "type_error.integer"),
    "int_type": ("value is not a valid integer", "type_error.integer"),
    "int_from_float": ("value is not a valid integer", "type_error.integer"),
    "float_parsing": ("value is not a valid float", "type_error.float"),
    "float_type": ("value is not a valid float", "type_error.float"),
    "bool_parsing": ("value could not be parsed to a boolean", "type_error.bool"),
    "bool_type": ("value could not be parsed to a boolean", "type_error.bool"),
    "string_type": ("str type expected", "type_error.str"),
    "dict_type": ("value is not a valid dict", "type_error.dict"),
    "list_type": ("value is not a valid list", "type_error.list"),
}


class GenerationRequest(BaseModel):
    """The txt2img/img2img fields the simulator reads (a subset of the WebUI's)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0.0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    script_name: str | None = None
    script_args: list[Any] | None = None
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = None
    force_task_id: str | None = None
    infotext: str | None = None
    # txt2img high-res fix
    enable_hr: bool | None = False
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    # img2img
    init_images: list[str] | None = None
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    include_init_images: bool | None = False

    def value(self, name: str) -> Any:
        """The field, with ``null`` meaning its default."""
        got = getattr(self, name)
        if got is None:
            return type(self).model_fields[name].default
        return got


class RequestInvalid(Exception):
    """The body cannot be used: answer ``status`` with ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


_PYDANTIC_URL = "https://errors.pydantic.dev/{}/v".format(
    ".".join(PYDANTIC_VERSION.split(".")[:2]))
_V2_BOUND = {"le": ("less_than_equal", "Input should be less than or equal to {}"),
             "ge": ("greater_than_equal", "Input should be greater than or equal to {}")}
_V1_BOUND = {"le": ("value_error.number.not_le", "ensure this value is less than or equal to {}"),
             "ge": ("value_error.number.not_ge",
                    "ensure this value is greater than or equal to {}")}


def out_of_range(field: str, bound: str, limit: int, value: Any, *,
                 full_v2: bool) -> RequestInvalid:
    """422 for a value past a bound (``bound`` "le" or "ge"), worded as the server's pydantic."""
    if full_v2:
        kind, msg = _V2_BOUND[bound]
        return RequestInvalid(422, {"detail": [{
            "type": kind, "loc": ["body", field], "msg": msg.format(limit), "input": value,
            "ctx": {bound: limit}, "url": f"{_PYDANTIC_URL}/{kind}"}]})
    kind, msg = _V1_BOUND[bound]
    return RequestInvalid(422, {"detail": [{"loc": ["body", field], "msg": msg.format(limit),
                                            "type": kind}]})


def parse_request(raw: bytes, *, pydantic_v1_wording: bool,
                  full_v2: bool = False) -> tuple[GenerationRequest, dict[str, Any]]:
    """Parse a request body into (validated request, the raw JSON object); raises
    ``RequestInvalid`` with the FastAPI-shaped 422 (``full_v2``: with ``input``/``url``)."""
    try:
        data = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError as exc:
        raise _json_error(raw, exc, full_v2) from exc
    if data is None:
        if full_v2:
            raise RequestInvalid(422, {"detail": [{"type": "missing", "loc": ["body"],
                                                   "msg": "Field required", "input": None,
                                                   "url": f"{_PYDANTIC_URL}/missing"}]})
        raise RequestInvalid(422, {"detail": [{"loc": ["body"], "msg": "field required",
                                               "type": "value_error.missing"}]})
    if not isinstance(data, dict):
        if full_v2:
            raise RequestInvalid(422, {"detail": [{
                "type": "model_attributes_type", "loc": ["body"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": data, "url": f"{_PYDANTIC_URL}/model_attributes_type"}]})
        msg, kind = (_V1_WORDING["dict_type"] if pydantic_v1_wording
                     else ("Input should be a valid dictionary", "dict_type"))
        raise RequestInvalid(422, {"detail": [{"loc": ["body"], "msg": msg, "type": kind}]})
    try:
        return GenerationRequest.model_validate(data), data
    except ValidationError as exc:
        raise RequestInvalid(422, {"detail": [_error(e, pydantic_v1_wording, full_v2)
                                              for e in exc.errors()]}) from exc


def _json_error(raw: bytes, exc: orjson.JSONDecodeError, full_v2: bool) -> RequestInvalid:
    if not full_v2:
        return RequestInvalid(422, {"detail": [{"loc": ["body", exc.pos],
                                                "msg": "JSON decode error",
                                                "type": "value_error.jsondecode",
                                                "ctx": {"msg": exc.msg, "pos": exc.pos}}]})
    try:  # FastAPI words it with the standard library's parser
        json.loads(raw)
        msg, pos = exc.msg, exc.pos
    except (json.JSONDecodeError, UnicodeDecodeError) as std:
        msg = getattr(std, "msg", str(std))
        pos = getattr(std, "pos", exc.pos)
    return RequestInvalid(422, {"detail": [{"type": "json_invalid", "loc": ["body", pos],
                                            "msg": "JSON decode error", "input": {},
                                            "ctx": {"error": msg}}]})


def _error(error: Any, v1: bool, full_v2: bool) -> dict[str, Any]:
    loc = ["body", *error.get("loc", ())]
    kind = str(error.get("type", "value_error"))
    if v1 and kind in _V1_WORDING:
        msg, kind = _V1_WORDING[kind]
        return {"loc": loc, "msg": msg, "type": kind}
    msg = str(error.get("msg", "invalid value"))
    if not full_v2:
        return {"loc": loc, "msg": msg, "type": kind}
    out: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": error.get("input")}
    if error.get("ctx"):
        out["ctx"] = {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                      for k, v in error["ctx"].items()}
    out["url"] = error.get("url") or f"{_PYDANTIC_URL}/{kind}"
    return out


def echo(request: GenerationRequest) -> dict[str, Any]:
    """The request as the WebUI echoes it in ``parameters``: every field, unresolved (seed -1)."""
    return request.model_dump()
