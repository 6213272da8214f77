"""p3m's Ikomia task ``infer_p3m_portrait_matting``: Ikomia's classes around :class:`MattingAdapter`.

Imported by the plugin files ``p3m ikomia install`` writes (needs ``ikomia``).
Inputs and outputs are those of Ikomia's own plugin: input 0 the image
((H, W, 3) uint8 RGB from ``get_image()``), output 0 the alpha matte
((H, W) uint8), output 1 the RGBA cutout ((H, W, 4) uint8).
"""
from __future__ import annotations

import copy

from ikomia import core, dataprocess

from p3m import __version__
from p3m.integrations.ikomia.adapter import DEFAULT_VALUES, MattingAdapter

TASK_NAME = "infer_p3m_portrait_matting"


class MattingParam(core.CWorkflowTaskParam):
    """The parameters as Ikomia stores them: a map of strings (see ``adapter.DEFAULT_VALUES``)."""

    def __init__(self):
        core.CWorkflowTaskParam.__init__(self)
        self.values = dict(DEFAULT_VALUES)

    def set_values(self, param_map):
        self.values.update({str(key): str(value) for key, value in param_map.items()})

    def get_values(self):
        return dict(self.values)


class MattingTask(dataprocess.C2dImageTask):
    """Portrait matting with p3m; the network is built on the first run and kept while the parameters stay."""

    def __init__(self, name, param):
        dataprocess.C2dImageTask.__init__(self, name)
        self.add_output(dataprocess.CImageIO())
        self.set_param_object(MattingParam() if param is None else copy.deepcopy(param))
        self.adapter = MattingAdapter()

    def get_progress_steps(self):
        return 1

    def run(self):
        self.begin_task_run()
        image = self.get_input(0).get_image()
        alpha, rgba = self.adapter.run(image, self.get_param_object().get_values())
        self.get_output(0).set_image(alpha)
        self.get_output(1).set_image(rgba)
        self.emit_step_progress()
        self.end_task_run()


class MattingTaskFactory(dataprocess.CTaskFactory):
    def __init__(self):
        dataprocess.CTaskFactory.__init__(self)
        info = self.info
        info.name = TASK_NAME
        info.short_description = "Privacy-preserving portrait matting (P3M-Net) with p3m"
        info.description = ("Trimap-free portrait matting with P3M-Net (ResNet-34 or ViTAE-S), the official "
                            "HYBRID/RESIZE inference, safe checkpoint loading and an optional privacy mode that blurs "
                            "faces before the network sees them. Output 0: the alpha matte; output 1: the RGBA cutout.")
        info.path = "Plugins/Python/Background"
        info.version = __version__
        info.authors = "Li, Jizhizi and Ma, Sihan and Zhang, Jing and Tao, Dacheng"
        info.article = "Privacy-Preserving Portrait Matting"
        info.journal = "ACM Multimedia"
        info.year = 2021
        info.license = "MIT License"
        info.documentation_link = "https://arxiv.org/abs/2104.14222"
        info.keywords = "portrait matting, privacy-preserving, P3M, alpha matte, background removal, pytorch"
        info.algo_type = core.AlgoType.INFER
        info.algo_tasks = "IMAGE_MATTING"

    def create(self, param=None):
        return MattingTask(self.info.name, param)


class IkomiaPlugin(dataprocess.CPluginProcessInterface):
    """The entry point Ikomia looks for in the plugin's main module (Ikomia API only: no Studio widget)."""

    def __init__(self):
        dataprocess.CPluginProcessInterface.__init__(self)

    def get_process_factory(self):
        return MattingTaskFactory()
