"""freqca_lab: the research side of comfyui-freqca (benchmark, baselines, metrics, probes, Auto-FR, the trained
testbed and its weights, and scripts that measure the node inside ComfyUI).

It imports the runtime core ``freqca_core``; the core never imports it, and it does not ship in the registry zip.
"""
