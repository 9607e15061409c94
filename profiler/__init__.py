"""wattlens.profiler: power sources, sampler, attribution, stacks, agent and the store.

Never imports Qt, torch (at import time), wattlens.advisor or wattlens.app.
"""
