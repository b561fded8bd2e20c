// The smallest webpack 5 set-up: nothing about workers or wasm (the package needs none).
import { fileURLToPath } from 'node:url';

export default {
  mode: 'production',
  entry: './check.js',
  output: { path: fileURLToPath(new URL('./dist', import.meta.url)), filename: 'main.js', clean: true },
};
