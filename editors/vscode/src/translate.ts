/** The target languages offered by "Translate File...", as quick-pick entries. */

export interface TargetLanguage {
  /** The identifier sent to the server (a VS Code language id). */
  readonly id: string;
  readonly label: string;
}

export const TARGET_LANGUAGES: readonly TargetLanguage[] = [
  { id: "python", label: "Python" },
  { id: "javascript", label: "JavaScript" },
  { id: "typescript", label: "TypeScript" },
  { id: "java", label: "Java" },
  { id: "go", label: "Go" },
  { id: "rust", label: "Rust" },
  { id: "c", label: "C" },
  { id: "cpp", label: "C++" },
  { id: "csharp", label: "C#" },
  { id: "kotlin", label: "Kotlin" },
  { id: "swift", label: "Swift" },
  { id: "ruby", label: "Ruby" },
  { id: "php", label: "PHP" },
  { id: "scala", label: "Scala" },
  { id: "lua", label: "Lua" },
];

export interface TargetPick {
  readonly label: string;
  readonly description: string;
  readonly language: string;
}

/**
 * Every known language but the source's: recently used ones first (most recent on
 * top), then the preferred ones (the `cato.translateTargets` setting, which may name
 * languages missing from the known list), then the rest in the list's order.
 */
export function translateTargets(
  sourceLanguage: string,
  recent: readonly string[] = [],
  preferred: readonly string[] = [],
  known: readonly TargetLanguage[] = TARGET_LANGUAGES,
): TargetPick[] {
  const extra = preferred
    .filter((id, index) => preferred.indexOf(id) === index && !known.some((lang) => lang.id === id))
    .map((id) => ({ id, label: id }));
  const order = [...recent, ...preferred];
  const rank = (id: string): number => {
    const index = order.indexOf(id);
    return index === -1 ? order.length : index;
  };
  return [...known, ...extra]
    .filter((lang) => lang.id !== sourceLanguage)
    .map((lang, position) => ({ lang, position, rank: rank(lang.id) }))
    .sort((a, b) => a.rank - b.rank || a.position - b.position)
    .map(({ lang }) => ({
      label: lang.label,
      description: recent.includes(lang.id) ? `${lang.id} (recent)` : lang.id,
      language: lang.id,
    }));
}

/** `recent` with `language` moved to the front, at most `limit` long. */
export function rememberTarget(recent: readonly string[], language: string, limit = 5): string[] {
  return [language, ...recent.filter((id) => id !== language)].slice(0, limit);
}
