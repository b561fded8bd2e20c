// `vite build` needs no configuration. The dev server's dependency pre-bundling moves the
// package's index.js into node_modules/.vite/deps/, where its `new URL('./worker.js',
// import.meta.url)` no longer finds worker.js: leave the package out of pre-bundling.
export default {
  optimizeDeps: { exclude: ['pupil-llm'] },
};
