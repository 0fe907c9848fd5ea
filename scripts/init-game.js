// `npx mlx-dm init`: make the game repository it runs in ready for `pnpm run train`, without
// touching anything the game's authors wrote. Needs no Python: the first `train` installs that.
//
//   package.json  adds the train, train:dev and train:validate scripts (a script of the same name
//                 that differs is kept unless you answer yes, or pass --force)
//   mlx-dm.toml   every setting, commented out at its default (only when the file is missing)
//   .gitignore    .venv/, runs/, .mlx-dm/ and assets/models/versions/ (lines it lacks, appended)
//   ai-training/, assets/models/   created when missing
//
// Running it again changes nothing and says so.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');

// What mlx-dm writes that a game repository should not commit: the Python environment, training runs,
// the dataset and lock, and older model versions kept for rollback (gigabytes each on a real model).
const IGNORED = ['.venv/', 'runs/', '.mlx-dm/', 'assets/models/versions/'];
const FOLDERS = [
  ['ai-training', 'put your scenario files (*.md) here'],
  ['assets/models', 'the trained model and its integration files land here'],
];
const USAGE = 'usage: npx mlx-dm init [--force]\n  --force  replace package.json scripts named train, train:dev, train:validate that differ';

class InitError extends Error {
  constructor(message, hint) {
    super(message);
    this.hint = hint;
    this.code = 2;
  }
}

// Writes through a temporary file and a rename, so an interrupted init never leaves half a file.
function writeAtomically(file, text) {
  const partial = `${file}.mlx-dm-partial-${process.pid}`;
  fs.writeFileSync(partial, text);
  try {
    fs.chmodSync(partial, fs.statSync(file).mode & 0o7777);
  } catch {
    // A new file keeps the umask's mode.
  }
  fs.renameSync(partial, file);
}

// The indentation package.json is written with (two spaces, four, a tab), so a rewrite keeps its look.
function indentOf(text) {
  const match = text.match(/^[{[]\r?\n([ \t]+)\S/);
  return match ? match[1] : '  ';
}

async function ask(question) {
  if (!process.stdin.isTTY || !process.stdout.isTTY) return false;
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout });
  const answer = await new Promise((resolve) => rl.question(question, resolve));
  rl.close();
  return /^y(es)?$/i.test(answer.trim());
}

async function mergeScripts(root, project, force, said) {
  const SCRIPTS = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'))['mlx-dm'].gameScripts;
  const file = path.join(project, 'package.json');
  if (!fs.existsSync(file)) {
    throw new InitError(`no package.json in ${project}`, 'run `npx mlx-dm init` in the root of your game (the folder with its package.json)');
  }
  const text = fs.readFileSync(file, 'utf8');
  let pkg;
  try {
    pkg = JSON.parse(text);
  } catch (err) {
    throw new InitError(`${file} is not valid JSON: ${err.message}`, 'fix package.json, then run `npx mlx-dm init` again');
  }
  const scripts = { ...(pkg.scripts || {}) };
  const added = [];
  for (const [name, command] of Object.entries(SCRIPTS)) {
    if (scripts[name] === command) continue;
    if (scripts[name] !== undefined) {
      const replace = force || await ask(`package.json already has "${name}": "${scripts[name]}". Replace it with "${command}"? [y/N] `);
      if (!replace) {
        said.notes.push(`kept your package.json script "${name}" ("${scripts[name]}"); mlx-dm's is "${command}" (--force replaces it)`);
        continue;
      }
      said.changed.push(`replaced package.json script "${name}" ("${scripts[name]}") with "${command}"`);
    } else {
      said.changed.push(`added package.json script "${name}": "${command}"`);
    }
    scripts[name] = command;
    added.push(name);
  }
  if (!added.length) return;
  pkg.scripts = scripts;
  const newline = text.includes('\r\n') ? '\r\n' : '\n';
  const body = JSON.stringify(pkg, null, indentOf(text)).replace(/\n/g, newline);
  writeAtomically(file, body + (text.endsWith('\n') ? newline : ''));
}

function writeSettings(root, project, said) {
  const file = path.join(project, 'mlx-dm.toml');
  if (fs.existsSync(file)) return;
  writeAtomically(file, fs.readFileSync(path.join(root, 'scripts', 'mlx-dm.toml'), 'utf8'));
  said.changed.push('wrote mlx-dm.toml (every setting, commented out at its default)');
}

// A .gitignore line already covers an entry when it names the same path with or without slashes.
function normalised(line) {
  return line.trim().replace(/^\//, '').replace(/\/$/, '');
}

function ignoreOutputs(project, said) {
  const file = path.join(project, '.gitignore');
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  const present = new Set(text.split(/\r?\n/).map(normalised));
  const missing = IGNORED.filter((entry) => !present.has(normalised(entry)));
  if (!missing.length) return;
  const lead = text && !text.endsWith('\n') ? '\n' : '';
  writeAtomically(file, `${text}${lead}${text ? '\n' : ''}# mlx-dm (npx mlx-dm init)\n${missing.join('\n')}\n`);
  said.changed.push(`${text ? 'added to' : 'wrote'} .gitignore: ${missing.join(' ')}`);
}

function checkFolders(project, said) {
  for (const [folder, purpose] of FOLDERS) {
    const full = path.join(project, folder);
    if (fs.existsSync(full)) {
      if (!fs.statSync(full).isDirectory()) throw new InitError(`${full} is a file, not a folder`, `move it away: mlx-dm needs ${folder}/ as a folder (${purpose})`);
      if (folder === 'ai-training') {
        const count = countScenarios(full);
        said.notes.push(`found ai-training/ with ${count} scenario file${count === 1 ? '' : 's'}`);
      }
      continue;
    }
    fs.mkdirSync(full, { recursive: true });
    fs.writeFileSync(path.join(full, '.gitkeep'), '');
    said.changed.push(`created ${folder}/ (${purpose})`);
  }
}

function countScenarios(folder) {
  let count = 0;
  for (const entry of fs.readdirSync(folder, { withFileTypes: true })) {
    if (entry.isDirectory()) count += countScenarios(path.join(folder, entry.name));
    else if (entry.name.endsWith('.md')) count += 1;
  }
  return count;
}

async function main(args, root, project) {
  const unknown = args.filter((arg) => arg !== '--force');
  if (unknown.length) throw new InitError(`unknown argument ${unknown[0]}`, USAGE);
  const said = { changed: [], notes: [] };  // what this run wrote; what it found and left as it was
  await mergeScripts(root, project, args.includes('--force'), said);
  writeSettings(root, project, said);
  ignoreOutputs(project, said);
  checkFolders(project, said);
  for (const line of [...said.changed, ...said.notes]) process.stdout.write(`mlx-dm init: ${line}\n`);
  if (!said.changed.length) process.stdout.write(`mlx-dm init: nothing to change in ${project}\n`);
  else {
    const runner = (process.env.npm_config_user_agent || 'npm').split('/')[0];  // pnpm, yarn or npm, as started
    process.stdout.write(`next: add scenarios to ai-training/, then \`${runner} run train:dev\` (a quick offline check) and \`${runner} run train\`\n`);
  }
}

// Called by scripts/train-model.js: an InitError is printed as message and hint with exit code 2;
// anything else is a bug, printed with its stack.
function cli(args, root, project) {
  main(args, root, project).catch((err) => {
    if (!(err instanceof InitError)) {
      process.stderr.write(`mlx-dm init: unexpected error (please report it)\n${err.stack}\n`);
      process.exit(1);
    }
    process.stderr.write(`mlx-dm init: ${err.message}\nhint: ${err.hint}\n`);
    process.exit(err.code);
  });
}

module.exports = { cli };
