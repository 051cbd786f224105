/**
 * The pure parts of the client's setup: which documents it sees and how it answers
 * `workspace/configuration`. Kept apart from `client.ts` so tests need no VS Code.
 */
import type { ConfigurationParams, DocumentSelector } from "vscode-languageserver-protocol";

import { type JsonObject, SECTION } from "./settings";

/** The `cato` settings for a resource (or the window), as the server wants them. */
export type SettingsProvider = (scopeUri?: string) => Promise<JsonObject>;

/** Documents of the enabled languages, on disk or untitled; `*` means every language. */
export function documentSelector(languages: readonly string[]): DocumentSelector {
  const schemes = ["file", "untitled"];
  if (languages.length === 0 || languages.includes("*")) {
    return schemes.map((scheme) => ({ scheme }));
  }
  return languages.flatMap((language) => schemes.map((scheme) => ({ scheme, language })));
}

/** Answers `workspace/configuration`: our section mapped, any other section as VS Code has it. */
export async function answerConfiguration(
  params: ConfigurationParams,
  settings: SettingsProvider,
  others: () => Promise<unknown[]>,
): Promise<unknown[]> {
  const needOthers = params.items.some((item) => item.section !== SECTION);
  const fallback = needOthers ? await others() : [];
  return Promise.all(
    params.items.map((item, index) =>
      item.section === SECTION ? settings(item.scopeUri) : Promise.resolve(fallback[index] ?? null),
    ),
  );
}
