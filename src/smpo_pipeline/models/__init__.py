"""Building, conditioning and sampling the SDXL-architecture models (tiny and full size).

No Kedro imports. torch / diffusers / transformers are imported by the modules that need them.
"""
