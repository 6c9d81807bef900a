"""A model's pins: the text-encoder pin is the same for a diffusers folder and its single-file export."""

from erasec.compiler.models.open import open_model
from erasec.compiler.models.pins import model_base_pin, model_text_encoder_pin, storage_dtype, text_encoder_tensors


def test_folder_and_single_file_pin_the_same_encoder_and_base(tiny_sd1_path, tiny_sd1_single_file):
    folder, file = open_model(str(tiny_sd1_path)), open_model(str(tiny_sd1_single_file))
    assert sorted(text_encoder_tensors(folder)) == sorted(text_encoder_tensors(file))
    assert not any(name.endswith("position_ids") for name in text_encoder_tensors(folder))
    assert model_text_encoder_pin(folder) == model_text_encoder_pin(file)
    layers = [site.module_path for site in folder.target.sites]
    assert model_base_pin(folder, layers) == model_base_pin(file, layers)
    assert storage_dtype(folder) == storage_dtype(file) == "fp32"
