/** Entry point: wires the controller, the palette commands and the settings watch. */
import * as vscode from "vscode";

import { registerCommands } from "./commands";
import { CatoController } from "./controller";
import { RESTART_KEYS, SECTION, touches } from "./settings";

let controller: CatoController | undefined;

export function activate(context: vscode.ExtensionContext): CatoController {
  const ctl = new CatoController(context.secrets);
  controller = ctl;
  context.subscriptions.push(
    ctl,
    ...registerCommands({ controller: ctl, globalState: context.globalState, secrets: context.secrets }),
    vscode.workspace.onDidChangeConfiguration((event) => onSettingsChanged(ctl, event)),
    context.secrets.onDidChange(() => void ctl.pushSettings()),
  );
  // Not awaited: finding and starting the server must not hold up VS Code's startup.
  void ctl.start();
  return ctl;
}

export async function deactivate(): Promise<void> {
  const ctl = controller;
  controller = undefined;
  await ctl?.stop();
}

function onSettingsChanged(ctl: CatoController, event: vscode.ConfigurationChangeEvent): void {
  if (!event.affectsConfiguration(SECTION)) {
    return;
  }
  if (touches((section) => event.affectsConfiguration(section), RESTART_KEYS)) {
    void ctl.restart();
  } else {
    void ctl.pushSettings();
  }
}
