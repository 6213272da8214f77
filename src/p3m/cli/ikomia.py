"""``p3m ikomia install [--force] | uninstall``: p3m as the Ikomia task ``infer_p3m_portrait_matting``."""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("ikomia", help="install or remove p3m's Ikomia plugin",
                                   description="Write or remove the Ikomia plugin infer_p3m_portrait_matting, "
                                               "which runs p3m, in Ikomia's plugin folder (~/Ikomia/Plugins/Python "
                                               "unless Ikomia's config.yaml says otherwise).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="write the plugin into Ikomia's plugin folder")
    install.add_argument("--force", action="store_true",
                         help="move a plugin of the same name that p3m did not install aside (uninstall puts it back)")
    install.set_defaults(handler=install_plugin)
    uninstall = actions.add_parser("uninstall", help="remove what 'p3m ikomia install' wrote")
    uninstall.set_defaults(handler=uninstall_plugin)


def install_plugin(args: argparse.Namespace) -> int:
    from p3m.integrations.ikomia import PLUGIN_NAME, PluginConflictError, install
    from p3m.integrations.ikomia.installer import ikomia_installed
    from p3m.io import UnsafeOutputError

    try:
        report = install(force=args.force)
    except (PluginConflictError, UnsafeOutputError) as error:
        return _fail(args, str(error))
    if report.moved_aside:
        print(f"moved the plugin that was there to {report.moved_aside}")
    print(f"{'updated' if report.updated else 'installed'} Ikomia plugin {PLUGIN_NAME} in {report.folder}")
    if ikomia_installed():
        print(f"Ikomia lists it as ik.{PLUGIN_NAME} from its next import")
    else:
        print("note: ikomia is not installed in this Python (pip install ikomia, or p3m's [ikomia] extra)",
              file=sys.stderr)
    return 0


def uninstall_plugin(args: argparse.Namespace) -> int:
    from p3m.integrations.ikomia import PluginConflictError, uninstall

    try:
        report = uninstall()
    except (FileNotFoundError, PluginConflictError) as error:
        return _fail(args, str(error))
    print(f"removed {len(report.removed)} files p3m installed from {report.folder}")
    for path in report.kept:
        print(f"kept {path} (not p3m's, or changed since install)")
    if report.restored:
        print(f"put back the plugin that was there before: {report.restored}")
    if report.still_aside:
        print(f"the plugin that was there before stays in {report.still_aside} (the folder is not empty)")
    return 0


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"p3m {args.command} {args.action}: error: {message}", file=sys.stderr)
    return 1
