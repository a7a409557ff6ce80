"""pvd: PVDNet video deblurring (BIMNet + pixel volumes) built on OpenAI Triton kernels."""

__version__ = "0.1.0"
