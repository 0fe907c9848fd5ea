#!/usr/bin/env node
// Bootstrap only: find Python >= 3.10, make .venv in the project (the folder it was started from),
// install mlx-dm's Python package when it changed, then run `mlx-dm <args>` (or pytest) there with
// the arguments forwarded. No training logic here; `init` is handed to scripts/init-game.js.
//
//   npx mlx-dm init                              -> scripts/init-game.js (package.json scripts, mlx-dm.toml, ...)
//   npx mlx-dm run --dev                         -> .venv/bin/mlx-dm run --dev
//   node scripts/train-model.js pytest -q        -> .venv/bin/python -m pytest -q
//
// Environment: MLX_DM_PYTHON (interpreter to use), MLX_DM_VENV (venv folder, default .venv),
// MLX_DM_CACHE (downloads and built wheels kept across environments, default ~/.cache/mlx-dm).
//
// Two ways this file runs. From a checkout of mlx-dm, the package is installed editable. From
// node_modules (the game added mlx-dm as a dependency), the package there is read-only: its Python
// sources are copied to a temporary folder and installed from there (pip and setuptools write
// build/ and *.egg-info beside the sources they build), and the install stamp covers every source
// file, so a new version of the npm package reinstalls.
//
// llama-cpp-python is built from its sdist with the flags of mlx_dm/llama/build.json, into a wheel
// cache keyed by those flags: pip's own wheel cache is keyed by the sdist only, so a wheel built with
// other flags (e.g. a native build on another CPU) would be reused silently.
'use strict';

const { spawnSync, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');  // the package: pyproject.toml and mlx_dm/
const PROJECT = process.cwd();  // the game: ai-training/, assets/models/, mlx-dm.toml
const INSTALLED = fs.realpathSync(ROOT).split(path.sep).includes('node_modules');
const MIN = [3, 10];
const SIGNAL_WORDS = {
  SIGILL: 'illegal instruction: native code built for another CPU', SIGSEGV: 'segmentation fault',
  SIGBUS: 'bus error', SIGFPE: 'floating-point exception', SIGABRT: 'aborted by native code', SIGKILL: 'killed, often for lack of memory',
};
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

function sha256(data) {
  return crypto.createHash('sha256').update(data).digest('hex');
}

// The CMake flags for llama.cpp on this machine (mlx_dm/llama/build.json says why).
function llamaCmakeArgs(build) {
  const platformKey = `${process.platform}-${process.arch}`;
  const args = [...(build.cmake_args[platformKey] || build.cmake_args.default)];
  if (platformKey === 'linux-x64') {
    const cpuinfo = fs.existsSync('/proc/cpuinfo') ? fs.readFileSync('/proc/cpuinfo', 'utf8') : '';
    const flagsLine = cpuinfo.split('\n').find((line) => line.startsWith('flags')) || '';
    const present = new Set(flagsLine.split(':').slice(1).join(':').trim().split(/\s+/));
    for (const [option, feature] of Object.entries(build.x86_features)) {
      if (option !== 'comment') args.push(`-D${option}=${present.has(feature) ? 'ON' : 'OFF'}`);
    }
    for (const off of ['GGML_AVX512', 'GGML_AVX_VNNI', 'GGML_AMX_TILE', 'GGML_AMX_INT8', 'GGML_AMX_BF16']) args.push(`-D${off}=OFF`);
  }
  return args;
}

function cacheDir() {
  return path.resolve(process.env.MLX_DM_CACHE || path.join(os.homedir(), '.cache', 'mlx-dm'));
}

// The pinned sdist, downloaded once and checked by sha256 (mlx_dm/llama/source.py reads the same file).
function ensureSdist(python, build) {
  const folder = path.join(cacheDir(), 'sdist');
  const file = path.join(folder, build.sdist.file);
  if (fs.existsSync(file) && sha256(fs.readFileSync(file)) === build.sdist.sha256) return file;
  fs.mkdirSync(folder, { recursive: true });
  process.stderr.write(`mlx-dm bootstrap: downloading ${build.package} ${build.version} (source) into ${folder}\n`);
  run(python, ['-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', '-d', folder, `${build.package}==${build.version}`],
    `downloading ${build.package} ${build.version}`);
  const got = fs.existsSync(file) ? sha256(fs.readFileSync(file)) : 'no file';
  if (got !== build.sdist.sha256) {
    fail(`${file} has sha256 ${got}, expected ${build.sdist.sha256}`, `delete ${file} and run again`, 9);
  }
  return file;
}

// A wheel of llama-cpp-python built with `cmakeArgs`, from the wheel cache or built now.
function llamaWheel(python, build, cmakeArgs, key) {
  const version = pythonVersion(python);
  const folder = path.join(cacheDir(), 'wheels', `${build.package}-${build.version}-py${version ? version.join('.') : '?'}-${key.slice(0, 16)}`);
  const existing = fs.existsSync(folder) ? fs.readdirSync(folder).filter((f) => f.endsWith('.whl')) : [];
  if (existing.length) return path.join(folder, existing[0]);
  const sdist = ensureSdist(python, build);
  process.stderr.write(`mlx-dm bootstrap: building ${build.package} ${build.version} with CMAKE_ARGS="${cmakeArgs.join(' ')}" (a few minutes)\n`);
  const partial = `${folder}.partial-${process.pid}`;
  fs.rmSync(partial, { recursive: true, force: true });
  const r = spawnSync(python, ['-m', 'pip', 'wheel', '--no-deps', '--no-cache-dir', '-w', partial, sdist],
    { stdio: 'inherit', cwd: ROOT, env: { ...process.env, CMAKE_ARGS: cmakeArgs.join(' '), FORCE_CMAKE: '1' } });
  if (r.status !== 0) {
    fs.rmSync(partial, { recursive: true, force: true });
    fail(`building ${build.package} failed`, 'read the output above: it needs a C++ compiler and CMake (Xcode command line tools on macOS, build-essential on Linux)', 9);
  }
  fs.renameSync(partial, folder);
  return path.join(folder, fs.readdirSync(folder).find((f) => f.endsWith('.whl')));
}

// The package's Python sources, in order, for the stamp of an installed (non-editable) copy.
function pythonSources(folder = path.join(ROOT, 'mlx_dm')) {
  const files = [];
  for (const entry of fs.readdirSync(folder, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (entry.name === '__pycache__' || entry.name.endsWith('.pyc')) continue;
    const full = path.join(folder, entry.name);
    if (entry.isDirectory()) files.push(...pythonSources(full));
    else files.push(full);
  }
  return files;
}

// Copies what pip needs to build the package into a temporary folder, so nothing is written into ROOT.
function stagedSources() {
  const staged = fs.mkdtempSync(path.join(os.tmpdir(), 'mlx-dm-src-'));
  for (const name of ['pyproject.toml', 'README.md']) fs.copyFileSync(path.join(ROOT, name), path.join(staged, name));
  for (const file of pythonSources()) {
    const target = path.join(staged, path.relative(ROOT, file));
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.copyFileSync(file, target);
  }
  return staged;
}

// OpenBLAS for MLX's CPU backend on Linux (mlx_dm/cpu_blas.json: the libraries and the package per
// package manager). Without it MLX multiplies matrices with the reference BLAS, several times slower.
// As root it is installed with one line saying so; with sudo only after asking at a terminal (a "no"
// is remembered); otherwise nothing is installed and every command that computes says why it is slow.
function ensureCpuBlas() {
  if (process.platform !== 'linux' || process.env.MLX_DM_CPU_BLAS) return;
  const table = JSON.parse(fs.readFileSync(path.join(ROOT, 'mlx_dm', 'cpu_blas.json'), 'utf8'));
  if (table.libraries.some((lib) => fs.existsSync(lib))) return;
  const installer = table.installers.find((i) => spawnSync('sh', ['-c', `command -v ${i.manager}`], { stdio: 'ignore' }).status === 0);
  if (!installer) return;
  const declined = path.join(cacheDir(), 'openblas-declined');
  let sudo = [];
  if (process.getuid() !== 0) {
    if (!process.stdin.isTTY || !hasCommand('sudo') || fs.existsSync(declined)) return;
    process.stderr.write(`mlx-dm bootstrap: without OpenBLAS, MLX on this CPU runs ${table.slowdown}.\n`
      + `Install it now with \`sudo ${installer.install.join(' ')}\`? [Y/n] `);
    const answer = Buffer.alloc(16);
    let n = 0;
    try { n = fs.readSync(0, answer, 0, 16, null); } catch { n = 0; }
    if (/^\s*n/i.test(answer.toString('utf8', 0, n))) {
      fs.mkdirSync(cacheDir(), { recursive: true });
      fs.writeFileSync(declined, 'the user answered no; delete this file to be asked again\n');
      return;
    }
    sudo = ['sudo'];
  }
  process.stderr.write(`mlx-dm bootstrap: installing OpenBLAS for MLX's CPU backend (${installer.manager} install ${installer.package}; outside .venv, once per machine)\n`);
  const attempt = (args) => spawnSync(sudo.length ? 'sudo' : args[0], sudo.length ? args : args.slice(1), { stdio: ['inherit', 'ignore', 'inherit'] }).status === 0;
  const ok = attempt(installer.install) || (installer.refresh.length > 0 && attempt(installer.refresh) && attempt(installer.install));
  if (!ok) process.stderr.write('mlx-dm bootstrap: OpenBLAS could not be installed (see above); MLX will use the reference BLAS\n');
}

// MLX's backend on Linux, an extra of pyproject.toml: "cuda" (MLX's CUDA 13 build) where an NVIDIA
// driver answers, else "cpu"; none on macOS (Metal comes with mlx). MLX_DM_MLX_BACKEND=cpu|cuda
// chooses. The two builds write the same library files, so a venv holds one: a change reinstalls.
function mlxBackend() {
  if (process.platform !== 'linux') return '';
  const chosen = process.env.MLX_DM_MLX_BACKEND;
  if (chosen === 'cpu' || chosen === 'cuda') return chosen;
  if (chosen) fail(`MLX_DM_MLX_BACKEND=${chosen} is not a backend`, 'set it to cpu or cuda, or unset it', 2);
  const driver = fs.existsSync('/proc/driver/nvidia/version')
    || spawnSync('nvidia-smi', ['-L'], { stdio: 'ignore' }).status === 0;
  return driver && process.arch === 'x64' ? 'cuda' : 'cpu';
}

function installPackage(python, extras, useUv) {
  const source = INSTALLED ? stagedSources() : ROOT;
  const target = `${source}${extras ? `[${extras}]` : ''}`;
  const editable = INSTALLED ? [] : ['-e'];
  try {
    if (useUv) run('uv', ['pip', 'install', '--python', python, ...editable, target], 'installing mlx-dm');
    else run(python, ['-m', 'pip', 'install', ...editable, target], 'installing mlx-dm');
  } finally {
    if (INSTALLED) fs.rmSync(source, { recursive: true, force: true });
  }
}

function ensureEnvironment(extras) {
  const venv = path.resolve(PROJECT, process.env.MLX_DM_VENV || '.venv');
  const python = venvBin(venv, 'python');
  const useUv = hasCommand('uv');
  if (!fs.existsSync(python)) {
    const base = findPython();
    process.stderr.write(`mlx-dm bootstrap: creating ${venv} with ${base}${useUv ? ' (uv)' : ''}\n`);
    if (useUv) run('uv', ['venv', '--seed', '--python', base, venv], 'creating the virtual environment');
    else run(base, ['-m', 'venv', venv], 'creating the virtual environment');
  }
  const pyproject = fs.readFileSync(path.join(ROOT, 'pyproject.toml'));
  const build = JSON.parse(fs.readFileSync(path.join(ROOT, 'mlx_dm', 'llama', 'build.json'), 'utf8'));
  const cmakeArgs = llamaCmakeArgs(build);
  const llamaKey = sha256(JSON.stringify([build.version, build.sdist.sha256, cmakeArgs]));  // = build.py: stamp_key()
  const stamp = crypto.createHash('sha256').update(pyproject).update(`extras=${extras}`).update(llamaKey);
  if (INSTALLED) for (const file of pythonSources()) stamp.update(path.relative(ROOT, file)).update(fs.readFileSync(file));
  const stampWanted = stamp.digest('hex');
  const stampFile = path.join(venv, '.mlx-dm-install-stamp');
  const stampFound = fs.existsSync(stampFile) ? fs.readFileSync(stampFile, 'utf8').trim() : '';
  if (stampFound !== stampWanted) {
    const wheel = llamaWheel(python, build, cmakeArgs, llamaKey);
    run(python, ['-m', 'pip', 'install', '--no-deps', '--force-reinstall', wheel], `installing ${path.basename(wheel)}`);
    process.stderr.write(`mlx-dm bootstrap: installing mlx-dm into ${venv}${extras ? ` with ${extras}` : ''} `
      + `(${INSTALLED ? 'its sources' : 'pyproject.toml'} or the llama.cpp build changed; a few minutes)\n`);
    installPackage(python, extras, useUv);
    fs.writeFileSync(path.join(venv, 'mlx-dm-llama-build.json'),
      `${JSON.stringify({ version: build.version, cmake_args: cmakeArgs, wheel }, null, 2)}\n`);
    fs.writeFileSync(stampFile, `${stampWanted}\n`);
  }
  return venv;
}

function main() {
  const args = process.argv.slice(2);
  if (args[0] === 'init') {
    require('./init-game.js').cli(args.slice(1), ROOT, PROJECT);
    return;
  }
  const pytest = args[0] === 'pytest';
  ensureCpuBlas();
  const venv = ensureEnvironment([pytest ? 'test' : '', mlxBackend()].filter(Boolean).join(','));
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
    if (signal) {
      const status = 128 + (os.constants.signals[signal] || 1);
      if (signal !== 'SIGINT' && signal !== 'SIGTERM') {
        process.stderr.write(`mlx-dm bootstrap: ${path.basename(cmd)} was killed by ${signal} (${SIGNAL_WORDS[signal] || 'a signal'}); `
          + `exit code ${status}\nhint: run \`${path.join(path.relative(process.cwd(), venv) || '.', 'bin', 'mlx-dm')} doctor\` to check this machine's llama.cpp and MLX; `
          + 'running the same command again resumes after the last finished stage\n');
      }
      process.exit(status);
    }
    process.exit(code === null ? 1 : code);
  });
}

main();
