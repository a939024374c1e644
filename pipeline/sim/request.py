"""The generation request as the WebUI's FastAPI layer sees it: parsed, typed, or 422.

Unknown fields are ignored, as the WebUI ignores them. Declared fields with the wrong type give
422 ``{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}]}``; for the AUTOMATIC1111
flavours the messages use pydantic v1 wording (as A1111's FastAPI does), for Forge and SD.Next
pydantic v2 wording. ``null`` for a field means its default.
"""

from __future__ import annotations

from typing import Any

import orjson
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


def unprocessable(field: str, msg: str, type_: str) -> RequestInvalid:
    return RequestInvalid(422, {"detail": [{"loc": ["body", field], "msg": msg, "type": type_}]})


def parse_request(raw: bytes, *, pydantic_v1_wording: bool) -> GenerationRequest:
    """Parse a request body; raises ``RequestInvalid`` with the FastAPI-shaped 422."""
    try:
        data = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError as exc:
        raise RequestInvalid(422, {"detail": [{"loc": ["body", exc.pos], "msg": "JSON decode error",
                                               "type": "value_error.jsondecode",
                                               "ctx": {"msg": exc.msg, "pos": exc.pos}}]}) from None
    if data is None:
        raise RequestInvalid(422, {"detail": [{"loc": ["body"], "msg": "field required",
                                               "type": "value_error.missing"}]})
    if not isinstance(data, dict):
        msg, kind = (_V1_WORDING["dict_type"] if pydantic_v1_wording
                     else ("Input should be a valid dictionary", "dict_type"))
        raise RequestInvalid(422, {"detail": [{"loc": ["body"], "msg": msg, "type": kind}]})
    try:
        return GenerationRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid(422, {"detail": [_error(e, pydantic_v1_wording)
                                              for e in exc.errors()]}) from None


def _error(error: Any, v1: bool) -> dict[str, Any]:
    loc = ["body", *error.get("loc", ())]
    kind = str(error.get("type", "value_error"))
    if v1 and kind in _V1_WORDING:
        msg, kind = _V1_WORDING[kind]
        return {"loc": loc, "msg": msg, "type": kind}
    return {"loc": loc, "msg": str(error.get("msg", "invalid value")), "type": kind}


def echo(request: GenerationRequest) -> dict[str, Any]:
    """The request as the WebUI echoes it in ``parameters``: every field, unresolved (seed -1)."""
    return request.model_dump()
