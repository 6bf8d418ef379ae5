"""Hugging Face transformers models, both ways: `model.init` reads a model folder into our modules (init.py), and
`selfsup export --format hf` writes a run as one (export.py). One module per family holds the one name table that
serves both directions, so an import and an export cannot disagree:

    folder.py       a local model folder or hf: id: config.json, weights (sharded or not), tokenizer, fingerprint
    init.py         model.init: which family a config.json is, its shape keys into the run's config, its weights
                    into the built objective
    llama.py        LlamaForCausalLM (and the Llama-shaped Mistral / Qwen2)  <-> the GPT decoder
    bert.py         BertForMaskedLM, RobertaForMaskedLM (and bare models) <-> the encoder with BERT's options
    gpt2.py         GPT2LMHeadModel <-> the GPT decoder with learned positions, biases, LayerNorm, gelu_tanh
    modernbert.py   ModernBertForMaskedLM (and the bare model) <-> the masked-LM encoder, local layers included
    resnet.py       ResNetModel (and a ResNetForImageClassification's trunk) <-> our ResNet-18/50, teachers included
    vit.py          ViTModel <-> the ViT of image objectives (learned or sin-cos positions; no pooler)
    dinov2.py       Dinov2Model <-> the ViT with model.layer_scale (vit.py's table, DINOv2's block names)
    clip.py         CLIPModel <-> the two towers of a clip run (ViT + causal text tower)
    siglip.py       SiglipModel <-> the two towers of a siglip run (ViT with attention pooling + text tower)
    open_clip.py    export only, not transformers: a clip run as open_clip's CLIP (--format open_clip)

A family module has the same few plain functions, so init.py and export.py read alike for each:

    ARCHITECTURE, MODEL_TYPES        its transformers class; the config.json model_types it reads
    OBJECTIVES, TOKENIZER            objectives whose backbone it can start; whether its tokenizer comes along
    KEYS                             our config keys -> its config.json's, for messages
    config_values(hf) -> {key: v}    our config keys from its config.json (raises Unsupported: why it cannot map);
                                     model.context, where given, is the most positions the model holds
    weights(theirs, objective)       yields (our state-dict name, tensor), one at a time (a missing one is one line)
    unfit(cfg) -> str | None         export: why this run does not map onto it, or None
    to_hf(cfg, objective, specials)  export: (tensors under its names, its config.json)
    processor_files(cfg, specials)   export, two-tower families (export.PROCESSORS): tokenizer_config.json and
                                     preprocessor_config.json, so AutoProcessor prepares inputs as training did
"""
