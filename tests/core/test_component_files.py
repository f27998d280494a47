"""Every FLUX part from the single files people hold (ComfyUI / Forge layouts), on the tiny models.

The files are built by :mod:`tests.core.flux_file_layouts` from diffusers' and transformers' own conversions (see
its docstring for why each layout is a reference). Each is loaded into a models directory whose ``flux/`` keeps
only configs, tokenizers and the scheduler (every weight file removed), offline, and must make the image the
diffusers folder makes: exactly for float32 files, within fp8's rounding for fp8 ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.engine import Engine
from core.loading.component_files import check_file, file_digest, inspect_file
from core.loading.single_file import SingleFileError, write_transformer_file
from core.loading.sources import ModelSources
from core.request import GenerationRequest
from tests.core import flux_file_layouts as layouts


@pytest.fixture(scope="module")
def parts(tiny_models):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    flux = Path(tiny_models) / "flux"
    return {"transformer": FluxTransformer2DModel.from_pretrained(flux / "transformer"),
            "vae": AutoencoderKL.from_pretrained(flux / "vae"),
            "clip": CLIPTextModel.from_pretrained(flux / "text_encoder").eval(),
            "t5": T5EncoderModel.from_pretrained(flux / "text_encoder_2").eval()}


@pytest.fixture(scope="module")
def files(parts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux-files")
    return {
        "transformer": write_transformer_file(parts["transformer"], folder / "flux1-dev.safetensors"),
        "vae": layouts.write(layouts.vae_to_ldm(parts["vae"]), folder / "ae.safetensors"),
        "clip": layouts.write(layouts.clip_to_original(parts["clip"]), folder / "clip_l.safetensors"),
        "t5": layouts.write(layouts.t5_to_original(parts["t5"]), folder / "t5xxl_fp32.safetensors"),
        "t5-fp8": layouts.write(layouts.t5_to_original(parts["t5"], torch.float8_e4m3fn),
                                folder / "t5xxl_fp8_e4m3fn.safetensors"),
        "t5-q8": layouts.write_t5_gguf(parts["t5"], folder / "t5-v1_1-xxl-encoder-Q8_0.gguf"),
        "all-in-one": layouts.write(layouts.all_in_one(*parts.values()), folder / "flux1-dev-aio.safetensors"),
        "all-in-one-fp8": layouts.write(layouts.all_in_one(*parts.values(), dtype=torch.float8_e4m3fn),
                                        folder / "flux1-dev-fp8.safetensors"),
    }


def _weightless(tiny_models, tmp_path: Path) -> Path:
    """A copy of the tiny models directory whose flux/ has every weight file removed (configs, tokenizers kept)."""
    target = tmp_path / "models"
    shutil.copytree(tiny_models, target, ignore=shutil.ignore_patterns("metrics"))
    for weights in (target / "flux").rglob("*.safetensors"):
        weights.unlink()
    return target


def _image(engine: Engine) -> np.ndarray:
    request = GenerationRequest("a fox on a hill", steps=2, width=64, height=64, seed=7)
    result = engine.generate(request, pipeline_options={"output_type": "np"})
    return np.asarray(result.images[0], dtype=np.float64)


@pytest.fixture(scope="module")
def folder_image(tiny_models):
    return _image(Engine(str(tiny_models), preset="full", device="cpu"))


def test_headers_say_which_parts_a_file_holds(files):
    assert inspect_file(files["vae"]).prefixes == {"vae": ""}
    assert inspect_file(files["clip"]).prefixes == {"text_encoder": ""}
    assert inspect_file(files["t5"]).prefixes == {"text_encoder_2": ""}
    aio = inspect_file(files["all-in-one"])
    assert aio.all_in_one and aio.prefixes == {
        "transformer": "model.diffusion_model.", "vae": "vae.", "text_encoder": "text_encoders.clip_l.transformer.",
        "text_encoder_2": "text_encoders.t5xxl.transformer."}
    fp8 = inspect_file(files["t5-fp8"])
    assert "F8_E4M3" in fp8.dtypes["text_encoder_2"]
    # the planner's bytes: fp8 stores one byte per weight, float32 four
    assert fp8.part_bytes["text_encoder_2"] < inspect_file(files["t5"]).part_bytes["text_encoder_2"] / 3
    assert sum(aio.part_bytes.values()) <= aio.file_bytes


# float32 VAE/CLIP/T5 files: the same tensors in the same memory layout, so the same image bit for bit. A
# transformer file stores q/k/v fused (BFL's qkv): split back they are strided views, whose matmuls may round
# differently from the folder's contiguous tensors (float32: 1e-5 of [0, 1]). fp8 files round weights to 3
# mantissa bits: the tolerance the single-file transformer test found for fp8 (0.08 of [0, 1]).
@pytest.mark.parametrize("given, tolerance", [
    ({"vae": "vae"}, 0.0), ({"clip": "clip"}, 0.0), ({"t5": "t5"}, 0.0), ({"t5": "t5-fp8"}, 0.08),
    ({"t5": "t5-q8"}, 0.02),  # Q8_0: 8-bit weights with a scale per 32, as the GGUF transformer test allows
    ({"base": "transformer", "vae": "vae", "clip": "clip", "t5": "t5"}, 1e-5),
    ({"base": "all-in-one"}, 1e-5), ({"base": "all-in-one-fp8"}, 0.08),
])
def test_each_file_makes_the_folder_image_with_no_weights_in_the_folder(given, tolerance, files, tiny_models,
                                                                          folder_image, tmp_path):
    models = _weightless(tiny_models, tmp_path)
    flux = models / "flux"
    keep = {"vae": "vae", "clip": "text_encoder", "t5": "text_encoder_2", "base": "transformer"}
    for option, sub in keep.items():  # the parts no file is given for keep their folder weights
        if option not in given and not given.get("base", "").startswith("all-in-one"):
            shutil.copytree(Path(tiny_models) / "flux" / sub, flux / sub, dirs_exist_ok=True)
    sources = ModelSources.parse(str(models))
    sources = sources.with_base(str(files[given["base"]]) if "base" in given else None)
    sources = sources.with_files(**{k: str(files[v]) for k, v in given.items() if k != "base"})
    engine = Engine(str(models), sources=sources, preset="full", device="cpu")
    image = _image(engine)
    difference = float(np.abs(image - folder_image).max())
    print(f"\n{given}: max |difference| {difference:.5f} (64x64, 2 steps, float32 compute)")
    assert difference <= tolerance
    if tolerance == 0.0:
        assert np.array_equal(image, folder_image)
    models_record = engine.provenance()["models"]
    for part, path in sources.part_files().items():  # the PNG names each file by name and digest, no path
        assert models_record[part] == {"file": Path(path).name, "digest": file_digest(path)}


def test_a_t5_gguf_reads_as_transformers_own_gguf_loader_reads_it(files, tiny_models):
    """Ours dequantizes tensor by tensor (no whole float32 copy); transformers' ``from_pretrained(gguf_file=...)``
    dequantizes the whole file with the config from its metadata: the weights must be the same."""
    from transformers import T5EncoderModel

    from core.loading.component_files import load_part

    info = inspect_file(files["t5-q8"])
    assert info.prefixes == {"text_encoder_2": ""} and "Q8_0" in info.dtypes["text_encoder_2"]
    ours = load_part(info, "text_encoder_2", torch.float32, Path(tiny_models) / "flux").state_dict()
    theirs = T5EncoderModel.from_pretrained(Path(files["t5-q8"]).parent, gguf_file=Path(files["t5-q8"]).name,
                                            dtype=torch.float32).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_files_in_the_models_directory_replace_their_parts(files, tiny_models, folder_image, tmp_path):
    models = _weightless(tiny_models, tmp_path)
    for kind in ("transformer", "vae", "clip", "t5"):
        shutil.copy(files[kind], models / "flux" / Path(files[kind]).name)
    sources = ModelSources.parse(str(models))
    assert {p: Path(f).name for p, f in sources.part_files().items()} == {
        "transformer": "flux1-dev.safetensors", "vae": "ae.safetensors", "text_encoder": "clip_l.safetensors",
        "text_encoder_2": "t5xxl_fp32.safetensors"}
    image = _image(Engine(str(models), preset="full", device="cpu"))
    assert float(np.abs(image - folder_image).max()) <= 1e-5  # float32 files; the transformer's q/k/v, above


def _comfyui_tree(root: Path, files: dict, tiny_models) -> Path:
    """A ComfyUI models folder using both folder-name generations (unet/ and diffusion_models/, clip/ and
    text_encoders/), with decoys: an SD VAE, a LoRA, an fp8 T5 beside the full-precision one, an all-in-one in
    checkpoints/, and a SigLIP so400m vision tower in clip_vision/."""
    from safetensors.torch import save_file

    models = root / "ComfyUI" / "models"
    for sub in ("unet", "diffusion_models", "vae", "clip", "text_encoders", "checkpoints", "clip_vision", "loras"):
        (models / sub).mkdir(parents=True)
    shutil.copy(files["transformer"], models / "unet" / "flux1-dev.safetensors")
    shutil.copy(files["all-in-one"], models / "checkpoints" / "flux1-dev-fp8.safetensors")
    shutil.copy(files["vae"], models / "vae" / "ae.safetensors")
    save_file({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)}, str(models / "vae" / "sdxl_vae.safetensors"))
    shutil.copy(files["clip"], models / "clip" / "clip_l.safetensors")
    shutil.copy(files["t5-fp8"], models / "clip" / "t5xxl_fp8_e4m3fn.safetensors")
    shutil.copy(files["t5"], models / "text_encoders" / "t5xxl_fp16.safetensors")
    shutil.copy(files["t5-q8"], models / "text_encoders" / "t5-v1_1-xxl-encoder-Q8_0.gguf")
    save_file({"vision_model.embeddings.position_embedding.weight": torch.zeros(729, 1152)},
              str(models / "clip_vision" / "sigclip_vision_patch14_384.safetensors"))
    save_file({"lora_unet_double_blocks_0.lora_down.weight": torch.zeros(2, 2)},
              str(models / "loras" / "style.safetensors"))
    return root / "ComfyUI"


def test_a_comfyui_folder_gives_the_right_file_for_each_part(files, tiny_models, tmp_path):
    root = _comfyui_tree(tmp_path, files, tiny_models)
    sources = ModelSources.parse(str(root))  # the install folder; its models/ is found
    models = root / "models"
    assert sources.part_files() == {
        "transformer": str(models / "unet" / "flux1-dev.safetensors"),
        "vae": str(models / "vae" / "ae.safetensors"),
        "text_encoder": str(models / "clip" / "clip_l.safetensors"),
        "text_encoder_2": str(models / "text_encoders" / "t5xxl_fp16.safetensors")}
    assert sources.siglip == str(models / "clip_vision" / "sigclip_vision_patch14_384.safetensors")
    notes = "\n".join(sources.notes)
    print("\n" + notes)
    assert ("FLUX.1 transformer: unet/flux1-dev.safetensors (a file of this part alone before an all-in-one "
            "checkpoint; also fit: flux1-dev-fp8.safetensors)") in notes
    assert ("T5-XXL text encoder: text_encoders/t5xxl_fp16.safetensors (the highest precision; also fit: "
            "t5xxl_fp8_e4m3fn.safetensors, t5-v1_1-xxl-encoder-Q8_0.gguf, flux1-dev-fp8.safetensors)") in notes
    assert "SigLIP: clip_vision/sigclip_vision_patch14_384.safetensors (so400m-patch14-384)" in notes
    assert sources.base == "black-forest-labs/FLUX.1-dev" and sources.adapter.startswith("tencent/")
    # with only diffusion_models/ and the fp8 T5 left, those are taken, the precision rule named
    (models / "unet" / "flux1-dev.safetensors").rename(models / "diffusion_models" / "flux1-dev.safetensors")
    (models / "text_encoders" / "t5xxl_fp16.safetensors").unlink()
    (models / "checkpoints" / "flux1-dev-fp8.safetensors").unlink()
    shutil.copy(files["t5"], models / "clip" / "t5xxl_fp32.safetensors")
    sources = ModelSources.parse(str(models))
    assert sources.transformer == str(models / "diffusion_models" / "flux1-dev.safetensors")
    assert sources.t5 == str(models / "clip" / "t5xxl_fp32.safetensors")
    assert ("T5-XXL text encoder: clip/t5xxl_fp32.safetensors (the highest precision; also fit: "
            "t5xxl_fp8_e4m3fn.safetensors, t5-v1_1-xxl-encoder-Q8_0.gguf)") in sources.notes


def test_a_comfyui_folder_loads_with_configs_from_a_base_folder(files, tiny_models, folder_image, tmp_path):
    """The tiny files need the tiny configs: a weightless diffusers folder as the base supplies them."""
    root = _comfyui_tree(tmp_path, files, tiny_models)
    (root / "models" / "clip_vision" / "sigclip_vision_patch14_384.safetensors").unlink()
    base = _weightless(tiny_models, tmp_path)
    sources = ModelSources.parse(str(root)).override(base=str(base / "flux"), siglip=str(base / "siglip"),
                                                     dinov2=str(base / "dinov2"), adapter=str(base / "adapter.safetensors"))
    shutil.copytree(Path(tiny_models) / "siglip", base / "siglip", dirs_exist_ok=True)
    shutil.copytree(Path(tiny_models) / "dinov2", base / "dinov2", dirs_exist_ok=True)
    shutil.copy(Path(tiny_models) / "adapter.safetensors", base / "adapter.safetensors")
    image = _image(Engine(str(base), sources=sources, preset="full", device="cpu"))
    assert float(np.abs(image - folder_image).max()) <= 1e-5  # float32 files; the transformer's q/k/v, above


def test_wrong_files_are_named_in_one_line(files, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(SingleFileError) as info:
        ModelSources().with_files(t5=str(files["vae"]))
    assert str(info.value) == (f"{files['vae']} given as --t5 is a FLUX VAE (float32), not a T5-XXL text encoder")
    with pytest.raises(SingleFileError, match=r"clip_l\.safetensors given as --vae is a CLIP-L text encoder"):
        ModelSources().with_files(vae=str(files["clip"]))
    truncated = tmp_path / "t5xxl_fp16.safetensors"
    truncated.write_bytes(Path(files["t5"]).read_bytes()[:4_000])
    with pytest.raises(SingleFileError, match=r"t5xxl_fp16\.safetensors is truncated: its tensors need"):
        ModelSources().with_files(t5=str(truncated))
    sd15 = tmp_path / "v1-5-pruned-emaonly.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 8),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)}, str(sd15))
    with pytest.raises(SingleFileError) as info:
        ModelSources().with_base(str(sd15))
    message = str(info.value)
    assert message.startswith(str(sd15)) and "\n" not in message
    assert message.endswith("given as --base looks like a Stable Diffusion 1.x/2.x checkpoint (UNet), not a "
                            "FLUX.1 transformer")
    sd_vae = tmp_path / "sdxl_vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)}, str(sd_vae))
    with pytest.raises(SingleFileError, match=r"sdxl_vae\.safetensors given as --vae looks like a VAE with "
                                              r"4 latent channels \(FLUX's has 16: an SD/SDXL VAE\?\), not a FLUX VAE"):
        check_file(sd_vae, "vae")
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(SingleFileError, match=r"style\.safetensors given as --clip looks like a LoRA, not a CLIP-L"):
        check_file(lora, "text_encoder")
    with pytest.raises(SingleFileError, match=r"style\.safetensors is not a FLUX file: it looks like a LoRA"):
        inspect_file(lora)
    with pytest.raises(SingleFileError, match="file not found"):
        ModelSources().with_files(clip=str(tmp_path / "missing.safetensors"))
    with pytest.raises(SingleFileError, match=r"t5-v1_1-xxl-encoder-Q8_0\.gguf given as --base is a T5-XXL text "
                                              r"encoder \(.*Q8_0.*\), not a FLUX\.1 transformer"):
        ModelSources().with_base(str(files["t5-q8"]))


def test_a_wrong_file_stops_the_generate_command_with_exit_2(files, tiny_models, tmp_path, capsys):
    from app.cli import main

    code = main(["generate", "--prompt", "a fox", "--steps", "2", "--width", "32", "--height", "32",
                 "--models", str(tiny_models), "--preset", "full", "--t5", str(files["vae"]),
                 "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "ae.safetensors given as --t5 is a FLUX VAE" in err
    assert len(err.strip().splitlines()) == 1


def test_generate_command_takes_every_part_as_a_file(files, tiny_models, tmp_path):
    from PIL import Image

    from app.cli import main

    models = _weightless(tiny_models, tmp_path)
    common = ["generate", "--prompt", "a fox", "--steps", "2", "--width", "32", "--height", "32", "--seed", "3",
              "--preset", "full"]
    assert main(common + ["--models", str(tiny_models), "--out", str(tmp_path / "folder.png")]) == 0
    assert main(common + ["--models", str(models), "--base", str(files["transformer"]), "--vae", str(files["vae"]),
                          "--clip", str(files["clip"]), "--t5", str(files["t5"]),
                          "--out", str(tmp_path / "files.png")]) == 0
    folder, from_files = (np.asarray(Image.open(tmp_path / n)) for n in ("folder.png", "files.png"))
    assert np.abs(folder.astype(int) - from_files.astype(int)).max() <= 1  # the transformer's split q/k/v, above



def test_story_commands_take_the_part_files_as_generate_does(files, tiny_models, tmp_path, monkeypatch, capsys):
    """``story render`` and ``story edit`` check ``--vae``/``--clip``/``--t5`` as ``generate`` does (a wrong file: one
    line, exit 2) and hand them to the engine as its sources."""
    import core.engine
    import core.story.edit
    from app.cli import main

    story = Path(__file__).resolve().parents[2] / "assets" / "stories" / "fishing-trip.story"
    out = ["--out", str(tmp_path / "out"), "--models", str(tiny_models), "--preset", "full"]
    monkeypatch.setattr(core.story.edit, "prepare_panel_edit", lambda *a, **k: [])  # as if the panel were rendered
    for command in (["story", "render", str(story)], ["story", "edit", str(story), "--panel", "1"]):
        assert main([*command, *out, "--t5", str(files["vae"])]) == 2
        err = capsys.readouterr().err
        assert "ae.safetensors given as --t5 is a FLUX VAE" in err and len(err.strip().splitlines()) == 1

    class Loaded(Exception):
        pass

    def engine(models, sources=None, **kwargs):
        raise Loaded(sources)

    monkeypatch.setattr(core.engine, "Engine", engine)
    from app.story_commands import story_main
    from app.cli import build_parser

    for command in (["story", "render", str(story)], ["story", "edit", str(story), "--panel", "1"]):
        args = build_parser().parse_args([*command, *out, "--vae", str(files["vae"]), "--clip", str(files["clip"]),
                                          "--t5", str(files["t5"])])
        with pytest.raises(Loaded) as info:
            story_main(args)
        sources = info.value.args[0]
        assert (sources.vae, sources.clip, sources.t5) == (str(files["vae"]), str(files["clip"]), str(files["t5"]))

def test_every_part_from_files_asks_no_gated_repository(files, monkeypatch):
    """With the default base and every part a file, configs are bundled and tokenizers come from ungated repos."""
    from core.loading import components

    asked = []

    def resolve(spec, what, *args, **kwargs):
        asked.append(spec)
        raise components.ModelSourceError(f"{spec} stop here")

    monkeypatch.setattr(components, "resolve_folder", resolve)
    sources = ModelSources().with_base(str(files["all-in-one"]))
    with pytest.raises(components.ModelSourceError, match="openai/clip-vit-large-patch14 stop here"):
        components.load_components(sources, dtype=torch.float32)
    assert asked == ["openai/clip-vit-large-patch14"]
    folder = components.bundled_flux_folder()
    assert {p.name for p in folder.iterdir()} >= {"model_index.json", "transformer", "vae", "text_encoder",
                                                   "text_encoder_2", "scheduler"}


def test_the_planner_counts_each_files_stored_bytes(files, capsys):
    from app.cli import main
    from core.loading.component_files import weight_files

    aio = inspect_file(files["all-in-one-fp8"])
    counted = weight_files(ModelSources().with_base(str(files["all-in-one-fp8"])).part_files())
    # an all-in-one file is read part by part: the most read at once is its largest part, not the whole file
    assert counted.largest_file_bytes == max(aio.part_bytes.values()) < aio.file_bytes
    fp8 = weight_files({"text_encoder_2": str(files["t5-fp8"])})
    assert fp8.largest_file_bytes == inspect_file(files["t5-fp8"]).part_bytes["text_encoder_2"]
    q8 = weight_files({"text_encoder_2": str(files["t5-q8"])})
    assert q8.largest_file_bytes == inspect_file(files["t5-q8"]).part_bytes["text_encoder_2"]
    assert main(["plan", "--vram", "24", "--ram", "32", "--t5", str(files["t5-fp8"])]) == 0
    assert "auto ->" in capsys.readouterr().out
    assert main(["plan", "--vram", "24", "--ram", "32", "--t5", str(files["clip"])]) == 2
    assert "given as --t5 is a CLIP-L text encoder" in capsys.readouterr().err


def test_a_siglip_file_from_clip_vision_makes_the_folder_image(tiny_models, folder_image, tmp_path, monkeypatch):
    """ComfyUI keeps SigLIP as one file (``clip_vision/sigclip_vision_patch14_384.safetensors``): it is loaded
    through a linked folder with the bundled config and processor settings. The bundled config is the full-size
    one, so the tiny SigLIP's config stands in for it here."""
    from core.loading import component_files

    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(Path(tiny_models) / "siglip" / "config.json", configs / "siglip-so400m-patch14-384-vision.json")
    monkeypatch.setattr(component_files, "CONFIG_DIR", configs)
    tower = tmp_path / "clip_vision" / "sigclip_vision_patch14_384.safetensors"
    tower.parent.mkdir()
    shutil.copy(Path(tiny_models) / "siglip" / "model.safetensors", tower)
    from PIL import Image

    from core.conditioning.character import Character

    hero = Image.fromarray((np.arange(48 * 48 * 3) % 251).astype(np.uint8).reshape(48, 48, 3))
    request = GenerationRequest("a [hero] on a hill", characters=[Character(hero, name="hero")], steps=2,
                                width=64, height=64, seed=7)

    def image(engine):
        return np.asarray(engine.generate(request, pipeline_options={"output_type": "np"}).images[0])

    sources = ModelSources.parse(str(tiny_models)).override(siglip=str(tower))
    engine = Engine(str(tiny_models), sources=sources, preset="full", device="cpu")
    with_file = image(engine)
    assert np.array_equal(with_file, image(Engine(str(tiny_models), preset="full", device="cpu")))
    assert not np.array_equal(with_file, folder_image)  # the character did count
    assert engine.provenance()["models"]["siglip"] == {"file": tower.name, "digest": file_digest(tower)}
