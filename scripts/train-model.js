#!/usr/bin/env node
// Bootstrap only: find Python >= 3.10, make .venv, install mlx-dm when pyproject.toml changed,
// then run `mlx-dm <args>` (or pytest) with the arguments forwarded. No training logic here.
//
//   node scripts/train-model.js run --dev        -> .venv/bin/mlx-dm run --dev
//   node scripts/train-model.js pytest -q        -> .venv/bin/python -m pytest -q
//
// Environment: MLX_DM_PYTHON (interpreter to use), MLX_DM_VENV (venv folder, default .venv).
'use strict';

const { spawnSync, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const MIN = [3, 10];
const isWindows = process.platform === 'win32';

function fail(message, hint, code = 9) {
  process.stderr.write(`mlx-dm bootstrap: ${message}\n`);
  if (hint) process.stderr.write(`hint: ${hint}\n`);
  process.exit(code);
}

function pythonVersion(exe) {
  const r = spawnSync(exe, ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])'], { encoding: 'utf8' });
  if (r.status !== 0 || !r.stdout) return null;
  const [major, minor] = r.stdout.trim().split('.').map(Number);
  return [major, minor];
}

function candidates() {
  const home = os.homedir();
  const list = [];
  if (process.env.MLX_DM_PYTHON) return [process.env.MLX_DM_PYTHON];
  for (const v of ['3.13', '3.12', '3.11', '3.10']) list.push(`python${v}`);
  list.push('python3', 'python');
  list.push('/opt/homebrew/bin/python3', '/usr/local/bin/python3', path.join(home, '.pyenv', 'shims', 'python3'),
    '/Library/Frameworks/Python.framework/Versions/Current/bin/python3', '/usr/bin/python3');
  if (isWindows) list.push('py');
  return list;
}

function findPython() {
  const tried = [];
  for (const exe of candidates()) {
    const version = pythonVersion(exe);
    if (!version) continue;
    tried.push(`${exe} (${version.join('.')})`);
    if (version[0] > MIN[0] || (version[0] === MIN[0] && version[1] >= MIN[1])) return exe;
  }
  const install = process.platform === 'darwin'
    ? 'brew install python@3.12   (or download it from python.org)'
    : process.platform === 'win32' ? 'winget install Python.Python.3.12' : 'sudo apt-get install python3 python3-venv   (or your distribution\'s equivalent)';
  const found = tried.length ? ` Found only: ${tried.join(', ')}.` : '';
  fail(`no Python >= ${MIN.join('.')} found.${found}`, `install one: ${install}; or set MLX_DM_PYTHON=/path/to/python3`, 9);
  return null;
}

function venvBin(venv, name) {
  return isWindows ? path.join(venv, 'Scripts', `${name}.exe`) : path.join(venv, 'bin', name);
}

function hasCommand(cmd) {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
}

function run(cmd, args, what) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: ROOT });
  if (r.status !== 0) fail(`${what} failed (${[cmd, ...args].join(' ')})`, 'read the output above; with no network, pre-install the packages or point MLX_DM_VENV at a ready environment', 9);
}

function ensureEnvironment(extras) {
  const venv = path.resolve(ROOT, process.env.MLX_DM_VENV || '.venv');
  const python = venvBin(venv, 'python');
  const useUv = hasCommand('uv');
  if (!fs.existsSync(python)) {
    const base = findPython();
    process.stderr.write(`mlx-dm bootstrap: creating ${venv} with ${base}${useUv ? ' (uv)' : ''}\n`);
    if (useUv) run('uv', ['venv', '--python', base, venv], 'creating the virtual environment');
    else run(base, ['-m', 'venv', venv], 'creating the virtual environment');
  }
  const pyproject = fs.readFileSync(path.join(ROOT, 'pyproject.toml'));
  const stampWanted = crypto.createHash('sha256').update(pyproject).update(`extras=${extras}`).digest('hex');
  const stampFile = path.join(venv, '.mlx-dm-install-stamp');
  const stamp = fs.existsSync(stampFile) ? fs.readFileSync(stampFile, 'utf8').trim() : '';
  if (stamp !== stampWanted) {
    const target = extras ? `.[${extras}]` : '.';
    process.stderr.write(`mlx-dm bootstrap: installing mlx-dm${extras ? ` with ${extras}` : ''} into ${venv} (pyproject.toml changed)\n`);
    if (useUv) run('uv', ['pip', 'install', '--python', python, '-e', target], 'installing mlx-dm');
    else run(python, ['-m', 'pip', 'install', '-e', target], 'installing mlx-dm');
    fs.writeFileSync(stampFile, `${stampWanted}\n`);
  }
  return venv;
}

function main() {
  const args = process.argv.slice(2);
  const pytest = args[0] === 'pytest';
  const venv = ensureEnvironment(pytest ? 'test' : '');
  const [cmd, cmdArgs] = pytest
    ? [venvBin(venv, 'python'), ['-m', 'pytest', ...args.slice(1)]]
    : [venvBin(venv, 'mlx-dm'), args];
  // Handlers first: the child can start and the user press Ctrl-C before the line after spawn()
  // runs (seen on a loaded 2-core machine), and node's default would then kill only node.
  let child = null;
  const forward = (signal) => () => {
    if (!child) process.exit(128 + os.constants.signals[signal]);
    if (!child.killed) child.kill(signal);
  };
  process.on('SIGINT', forward('SIGINT'));
  process.on('SIGTERM', forward('SIGTERM'));
  child = spawn(cmd, cmdArgs, { stdio: 'inherit', cwd: process.cwd() });
  child.on('error', (err) => fail(`could not start ${cmd}: ${err.message}`, 'delete the .venv folder and run again', 9));
  child.on('exit', (code, signal) => {
    if (signal) process.exit(128 + (os.constants.signals[signal] || 1));
    process.exit(code === null ? 1 : code);
  });
}

main();
