// A study in the viewer's window ("pacs-viewer"), the same window each time: where that window
// already runs the viewer, the study is shown in place (the viewer's pacsViewer.open, which
// changes study without loading the viewer's scripts again: a fraction of a page load);
// otherwise the window is opened, or loaded, at the study's address.

export const VIEWER_WINDOW = "pacs-viewer";

export const viewerUrl = (studyUid) => `/viewer/viewer?StudyInstanceUIDs=${encodeURIComponent(studyUid)}`;

export function openInViewer(studyUid, features) {
  const target = window.open("", VIEWER_WINDOW, features);  // an open window is found, not reloaded
  if (!target) return null;
  try {
    if (target.pacsViewer?.open?.(studyUid)) {
      target.focus();
      return target;
    }
  } catch {
    // not the viewer's page (yet): loaded at the address below
  }
  target.location.href = viewerUrl(studyUid);
  return target;
}
