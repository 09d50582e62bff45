// What the panels ask of each other, wired by dashboard.js at start-up (so no panel imports another).
export const app = {
  loadJobs: () => {}, // re-read the jobs list now (a job was just started)
  refreshSoon: () => {}, // re-read the cluster's models and the registry shortly (a job just ended)
};
