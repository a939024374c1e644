"""Which images are generations, which seed each has, and which responses are not successes."""

from __future__ import annotations

import base64
import io

import orjson
import pytest
from PIL import Image as PILImage

from pipeline.backends.webui.client import error_message
from pipeline.errors import BadResponseError, SubstitutionError
from pipeline.model import Variant
from pipeline.backends.webui.response import (check_substitution, checkpoint_matches, sampler_matches,
                               sniff_format, split_images)


def _img(color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8), color).save(buf, fmt)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _variant(**payload: object) -> Variant:
    base = {"prompt": "p", "seed": -1, "batch_size": 1, "n_iter": 1}
    base.update(payload)
    return Variant(id="v1", ordinal=0, prompt="p", negative_prompt="", seed=-1, payload=base)


def test_grid_first_generations_then_extras() -> None:
    grid, a, b, extra = _img((0, 0, 0)), _img((255, 0, 0)), _img((0, 255, 0)), _img((9, 9, 9))
    info = {"all_seeds": [100, 101], "all_subseeds": [7, 8], "index_of_first_image": 1,
            "all_prompts": ["p1", "p2"], "infotexts": ["grid info", "info 1", "info 2"]}
    body = {"images": [_b64(x) for x in (grid, a, b, extra)], "info": orjson.dumps(info).decode()}
    images, parsed = split_images(body, _variant(batch_size=2, save_images=True))
    gens = [i for i in images if i.kind == "generation"]
    extras = [i for i in images if i.kind == "extra"]
    assert [g.data for g in gens] == [a, b]
    assert [g.seed for g in gens] == [100, 101] and [g.subseed for g in gens] == [7, 8]
    assert [g.prompt for g in gens] == ["p1", "p2"]
    assert [g.infotext for g in gens] == ["info 1", "info 2"]  # the grid's infotext comes first
    assert len(extras) == 1 and extras[0].data == extra and extras[0].seed is None
    assert parsed["index_of_first_image"] == 1


def test_info_as_object_and_missing_index_without_save_images() -> None:
    a, b = _img((1, 2, 3)), _img((4, 5, 6))
    body = {"images": [_b64(a), _b64(b)], "info": {"seed": 5, "all_seeds": [5, 6]}}
    images, _ = split_images(body, _variant(batch_size=2))
    assert [(i.data, i.seed) for i in images] == [(a, 5), (b, 6)]


def test_jpeg_and_webp_sniffed() -> None:
    jpg, webp = _img((1, 1, 1), "JPEG"), _img((1, 1, 1), "WEBP")
    assert sniff_format(jpg) == "jpeg" and sniff_format(webp) == "webp"
    body = {"images": [_b64(jpg)], "info": '{"all_seeds": [3]}'}
    images, _ = split_images(body, _variant())
    assert images[0].format == "jpeg" and images[0].data == jpg


@pytest.mark.parametrize("body,message", [
    ({"images": [], "info": ""}, "no images"),
    ({"info": "{}"}, "no 'images' list"),
    ({"images": ["!!notbase64!!"], "info": '{"all_seeds": [1]}'}, "not valid base64"),
    ({"images": [_b64(b"hello world")], "info": '{"all_seeds": [1]}'}, "is not a PNG"),
    ({"images": [_b64(_img((0, 0, 0)))], "info": "{not json"}, "'info' is not valid JSON"),
    ({"images": [_b64(_img((0, 0, 0)))], "info": '{"all_seeds": [1, 2]}'}, "got 1 of 2"),
    ({"images": [_b64(_img((0, 0, 0)))], "info": '{"x": 1}'}, "neither 'all_seeds' nor 'seed'"),
])
def test_unusable_responses(body: dict, message: str) -> None:
    variant = _variant(batch_size=2) if "got 1 of 2" in message else _variant()
    with pytest.raises(BadResponseError, match=message):
        split_images(body, variant)


def test_fewer_seeds_than_requested() -> None:
    body = {"images": [_b64(_img((0, 0, 0)))], "info": '{"all_seeds": [1]}'}
    with pytest.raises(BadResponseError, match="1 seeds for 2"):
        split_images(body, _variant(batch_size=2))


@pytest.mark.parametrize("asked,info,ok", [
    ("v1-5-pruned-emaonly", {"sd_model_name": "v1-5-pruned-emaonly", "sd_model_hash": "6ce0161689"}, True),
    ("v1-5-pruned-emaonly.safetensors", {"sd_model_name": "v1-5-pruned-emaonly"}, True),
    ("v1-5-pruned-emaonly.safetensors [6ce0161689]", {"sd_model_name": "other", "sd_model_hash": "6ce0161689"}, True),
    ("6ce0161689", {"sd_model_name": "v1-5", "sd_model_hash": "6ce0161689"}, True),
    ("sub/dreamshaper_8.safetensors", {"sd_model_name": "dreamshaper_8"}, True),
    ("dreamshaper_8", {"sd_model_name": "v1-5-pruned-emaonly", "sd_model_hash": "6ce0161689"}, False),
    ("anything", {}, True),
])
def test_checkpoint_matching(asked: str, info: dict, ok: bool) -> None:
    assert checkpoint_matches(asked, info) is ok


@pytest.mark.parametrize("asked,used,ok", [
    ("DPM++ 2M", "DPM++ 2M", True), ("DPM++ 2M Karras", "DPM++ 2M", True),
    ("euler a", "Euler a", True), ("Euler a", "DPM++ 2M", False),
])
def test_sampler_matching(asked: str, used: str, ok: bool) -> None:
    assert sampler_matches(asked, {"sampler_name": used}) is ok


def test_substitution_is_an_error() -> None:
    variant = _variant(sampler_name="Eular a", override_settings={"sd_model_checkpoint": "x"})
    with pytest.raises(SubstitutionError, match="checkpoint 'x'"):
        check_substitution(variant, {"sd_model_name": "v1-5", "sampler_name": "Eular a"})
    with pytest.raises(SubstitutionError, match="sampler 'Eular a'"):
        check_substitution(variant, {"sd_model_name": "x", "sampler_name": "DPM++ 2M"})


@pytest.mark.parametrize("body,expected", [
    (b'{"error":"OutOfMemoryError","detail":"","body":"","errors":"CUDA out of memory"}',
     "OutOfMemoryError: CUDA out of memory"),
    (b'{"error":"RuntimeError","detail":"","body":"","message":"boom"}', "RuntimeError: boom"),
    (b'{"detail":"Not authenticated"}', "Not authenticated"),
    (b'{"detail":[{"loc":["body","steps"],"msg":"value is not a valid integer","type":"x"}]}',
     "invalid request: steps: value is not a valid integer"),
    (b"<html>502 Bad Gateway</html>", "502 Bad Gateway"),
])
def test_error_shapes(body: bytes, expected: str) -> None:
    assert expected in error_message(body)


@pytest.mark.parametrize("asked,info,aliases,ok", [
    ("k_euler_a", {"sampler_name": "Euler a"}, {"k_euler_a": "Euler a"}, True),
    ("DPM++ SDE Karras", {"sampler_name": "DPM++ SDE"}, {}, True),
    ("k_euler_a", {"sampler_name": "DPM++ 2M"}, {"k_euler_a": "Euler a"}, False),
])
def test_sampler_aliases(asked: str, info: dict, aliases: dict, ok: bool) -> None:
    assert sampler_matches(asked, info, aliases) is ok


def test_checkpoint_in_a_subfolder() -> None:
    info = {"sd_model_name": "SDXL_juggernaut", "sd_model_hash": "abcdef1234"}
    assert checkpoint_matches("SDXL/juggernaut.safetensors", info)
    assert checkpoint_matches("SDXL/juggernaut.safetensors [abcdef1234]", info)
    assert not checkpoint_matches("SDXL/other.safetensors", info)
