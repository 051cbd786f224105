/**
 * A small stand-in for the `vscode` module (aliased in vitest.config.mts): the API
 * surface the extension uses, backed by in-memory state the tests can set and inspect
 * through `mock`.
 */
import * as path from "node:path";

type Listener<T> = (value: T) => unknown;

export class Disposable {
  constructor(private readonly onDispose: () => void = () => undefined) {}
  dispose(): void {
    this.onDispose();
  }
}

export class EventEmitter<T> {
  private listeners: Listener<T>[] = [];
  readonly event = (listener: Listener<T>): Disposable => {
    this.listeners.push(listener);
    return new Disposable(() => {
      this.listeners = this.listeners.filter((l) => l !== listener);
    });
  };
  fire(value: T): void {
    for (const listener of [...this.listeners]) {
      listener(value);
    }
  }
  dispose(): void {
    this.listeners = [];
  }
}

export class Uri {
  private constructor(
    readonly scheme: string,
    readonly fsPath: string,
  ) {}
  static file(file: string): Uri {
    return new Uri("file", path.resolve(file));
  }
  static parse(value: string): Uri {
    const match = /^([a-z][\w+.-]*):(?:\/\/)?(.*)$/i.exec(value);
    if (match === null) {
      return new Uri("file", value);
    }
    const [, scheme = "file", rest = ""] = match;
    return new Uri(scheme, decodeURIComponent(rest));
  }
  toString(): string {
    return this.scheme === "file" ? `file://${encodeURI(this.fsPath)}` : `${this.scheme}:${this.fsPath}`;
  }
}

export class Position {
  constructor(
    readonly line: number,
    readonly character: number,
  ) {}
}

export class Selection {
  constructor(
    readonly anchor: Position,
    readonly active: Position,
  ) {}
  get start(): Position {
    return before(this.anchor, this.active) ? this.anchor : this.active;
  }
  get end(): Position {
    return before(this.anchor, this.active) ? this.active : this.anchor;
  }
}

function before(a: Position, b: Position): boolean {
  return a.line < b.line || (a.line === b.line && a.character <= b.character);
}

export class ThemeColor {
  constructor(readonly id: string) {}
}

export enum ProgressLocation {
  SourceControl = 1,
  Window = 10,
  Notification = 15,
}

export class CancellationTokenSource {
  private readonly emitter = new EventEmitter<void>();
  isCancellationRequested = false;
  readonly token = {
    isCancellationRequested: false,
    onCancellationRequested: (listener: () => unknown): Disposable => this.emitter.event(listener),
  };
  cancel(): void {
    this.isCancellationRequested = true;
    this.token.isCancellationRequested = true;
    this.emitter.fire();
  }
}

export interface MockProgress {
  readonly options: { location: ProgressLocation; title?: string; cancellable?: boolean };
  readonly reports: { message?: string; increment?: number }[];
  readonly cancel: CancellationTokenSource;
  done: boolean;
}

export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}

export interface MockStatusBarItem {
  id: string;
  alignment: StatusBarAlignment;
  priority: number | undefined;
  name: string | undefined;
  text: string;
  tooltip: string | undefined;
  command: string | undefined;
  backgroundColor: ThemeColor | undefined;
  visible: boolean;
  disposed: boolean;
  show(): void;
  hide(): void;
  dispose(): void;
}

export interface MockOutputChannel {
  readonly name: string;
  readonly lines: string[];
  shown: boolean;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  debug(message: string): void;
  trace(message: string): void;
  append(value: string): void;
  appendLine(value: string): void;
  replace(value: string): void;
  clear(): void;
  show(): void;
  hide(): void;
  dispose(): void;
}

interface Inspected {
  defaultValue?: unknown;
  globalValue?: unknown;
  workspaceValue?: unknown;
  workspaceFolderValue?: unknown;
}

export interface MockTextDocument {
  readonly uri: Uri;
  readonly languageId: string;
}

type MessageAnswer = string | undefined;

/** Test-side state and knobs. */
export const mock = {
  /** `cato.*` values by dotted key, per scope. */
  settings: { global: {} as Record<string, unknown>, workspace: {} as Record<string, unknown> },
  defaults: {} as Record<string, unknown>,
  commands: new Map<string, (...args: unknown[]) => unknown>(),
  executed: [] as { command: string; args: unknown[] }[],
  statusItems: [] as MockStatusBarItem[],
  outputs: [] as MockOutputChannel[],
  messages: [] as { level: "info" | "warning" | "error"; text: string; items: string[] }[],
  progress: [] as MockProgress[],
  messageAnswer: undefined as MessageAnswer,
  quickPicks: [] as { items: unknown[]; options: unknown }[],
  quickPickAnswer: (items: readonly unknown[]): unknown => items[0],
  inputBoxAnswer: undefined as string | undefined,
  clipboard: "",
  extensions: new Map<string, unknown>(),
  documents: new Map<string, MockTextDocument>(),
  configurationChanged: new EventEmitter<{ affectsConfiguration(section: string): boolean }>(),
  reset(): void {
    this.settings = { global: {}, workspace: {} };
    this.defaults = {};
    this.commands.clear();
    this.executed = [];
    this.statusItems = [];
    this.outputs = [];
    this.messages = [];
    this.progress = [];
    this.messageAnswer = undefined;
    this.quickPicks = [];
    this.quickPickAnswer = (items) => items[0];
    this.inputBoxAnswer = undefined;
    this.clipboard = "";
    this.extensions.clear();
    this.documents.clear();
    this.configurationChanged = new EventEmitter();
    window.activeTextEditor = undefined;
    workspace.workspaceFolders = undefined;
    workspace.isTrusted = true;
  },
};

function configuration(section: string): {
  get<T>(key: string, fallback?: T): T | undefined;
  inspect(key: string): Inspected | undefined;
  has(key: string): boolean;
} {
  const full = (key: string): string => (section === "" ? key : `${section}.${key}`);
  const lookup = (key: string): Inspected => ({
    defaultValue: mock.defaults[full(key)],
    globalValue: mock.settings.global[full(key)],
    workspaceValue: mock.settings.workspace[full(key)],
  });
  return {
    get<T>(key: string, fallback?: T): T | undefined {
      const i = lookup(key);
      return (i.workspaceValue ?? i.globalValue ?? i.defaultValue ?? fallback) as T | undefined;
    },
    inspect: (key) => lookup(key),
    has: (key) => lookup(key).defaultValue !== undefined,
  };
}

function message(level: "info" | "warning" | "error") {
  return (text: string, ...items: string[]): Promise<MessageAnswer> => {
    mock.messages.push({ level, text, items });
    return Promise.resolve(mock.messageAnswer);
  };
}

export const window = {
  activeTextEditor: undefined as { document: MockTextDocument; selection: Selection } | undefined,
  createStatusBarItem(id: string, alignment: StatusBarAlignment, priority?: number): MockStatusBarItem {
    const item: MockStatusBarItem = {
      id,
      alignment,
      priority,
      name: undefined,
      text: "",
      tooltip: undefined,
      command: undefined,
      backgroundColor: undefined,
      visible: false,
      disposed: false,
      show() {
        item.visible = true;
      },
      hide() {
        item.visible = false;
      },
      dispose() {
        item.disposed = true;
      },
    };
    mock.statusItems.push(item);
    return item;
  },
  createOutputChannel(name: string): MockOutputChannel {
    const lines: string[] = [];
    const channel: MockOutputChannel = {
      name,
      lines,
      shown: false,
      info: (m) => lines.push(`[info] ${m}`),
      warn: (m) => lines.push(`[warn] ${m}`),
      error: (m) => lines.push(`[error] ${m}`),
      debug: (m) => lines.push(`[debug] ${m}`),
      trace: (m) => lines.push(`[trace] ${m}`),
      append: (v) => lines.push(v),
      appendLine: (v) => lines.push(v),
      replace: (v) => lines.splice(0, lines.length, v),
      clear: () => lines.splice(0, lines.length),
      show() {
        channel.shown = true;
      },
      hide() {
        channel.shown = false;
      },
      dispose: () => undefined,
    };
    mock.outputs.push(channel);
    return channel;
  },
  withProgress<R>(
    options: MockProgress["options"],
    task: (
      progress: { report(value: { message?: string; increment?: number }): void },
      token: CancellationTokenSource["token"],
    ) => Promise<R>,
  ): Promise<R> {
    const shown: MockProgress = { options, reports: [], cancel: new CancellationTokenSource(), done: false };
    mock.progress.push(shown);
    const result = task({ report: (value) => shown.reports.push(value) }, shown.cancel.token);
    void result.then(() => {
      shown.done = true;
    });
    return result;
  },
  showInformationMessage: message("info"),
  showWarningMessage: message("warning"),
  showErrorMessage: message("error"),
  showQuickPick(items: readonly unknown[], options?: unknown): Promise<unknown> {
    mock.quickPicks.push({ items: [...items], options });
    return Promise.resolve(mock.quickPickAnswer(items));
  },
  showInputBox(): Promise<string | undefined> {
    return Promise.resolve(mock.inputBoxAnswer);
  },
};

export const workspace = {
  workspaceFolders: undefined as { uri: Uri; name: string; index: number }[] | undefined,
  isTrusted: true,
  getConfiguration: (section = "") => configuration(section),
  getWorkspaceFolder: (uri: Uri) =>
    workspace.workspaceFolders?.find((f) => uri.fsPath.startsWith(f.uri.fsPath + path.sep)),
  onDidChangeConfiguration: (listener: Listener<{ affectsConfiguration(section: string): boolean }>) =>
    mock.configurationChanged.event(listener),
  openTextDocument(uri: Uri): Promise<MockTextDocument> {
    const known = mock.documents.get(uri.toString());
    return known === undefined
      ? Promise.reject(new Error(`no document ${uri.toString()}`))
      : Promise.resolve(known);
  },
};

export const commands = {
  registerCommand(id: string, run: (...args: unknown[]) => unknown): Disposable {
    if (mock.commands.has(id)) {
      throw new Error(`command '${id}' already exists`);
    }
    mock.commands.set(id, run);
    return new Disposable(() => mock.commands.delete(id));
  },
  executeCommand(command: string, ...args: unknown[]): Promise<unknown> {
    mock.executed.push({ command, args });
    const run = mock.commands.get(command);
    return Promise.resolve(run?.(...args));
  },
};

export const extensions = {
  getExtension(id: string): unknown {
    return mock.extensions.get(id);
  },
};

export const env = {
  clipboard: {
    writeText(text: string): Promise<void> {
      mock.clipboard = text;
      return Promise.resolve();
    },
  },
};
