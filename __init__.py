"""comfyui-freqca: frequency-aware feature caching (FreqCa) for diffusion transformers in ComfyUI.

ComfyUI imports this folder as a custom-node package and calls ``comfy_entrypoint``. Outside ComfyUI
(tests, the benchmark) nothing here imports comfy, so the package can be imported anywhere.
"""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.freqca_node import FreqCaExtension

    return FreqCaExtension()
