"""ComfyUI glue of comfyui-freqca: node definitions and per-family model hooks (imports comfy)."""
