"""Ikomia plugin infer_p3m_portrait_matting, installed by ``p3m ikomia install``."""
