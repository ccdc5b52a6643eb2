"""Development tools for vllm-gptoss (not installed with the plugin; see dev/pyproject.toml).

  fixture/            a tiny gpt-oss that speaks harmony, trained on the CPU (tests, demo, CPU image)
  checkpoint_writer   gpt-oss checkpoints in the released layout (config, safetensors, MXFP4 experts)
  malformations       the corpus of malformed harmony completions the parser must survive
  stock_compare       vLLM's built-in harmony parser vs ours on that corpus (STOCK_VS_OURS.md)
  demo                serve the fixture with the plugin and query it with the openai client
  weight_memory       parameter bytes our model allocates for a config, counted on the meta device
"""
