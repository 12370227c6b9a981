/*
 * The viewer's configuration: OHIF's app configuration (window.config) for this archive.
 *
 * Served at /viewer/static/app-config.js, loaded by OHIF's page before its bundle. The page
 * (/viewer) sets window.pacsViewer first: the user's language, the labels of the project's
 * message catalogues (viewer.*) and the window presets of the mappings (window_presets.yaml).
 *
 * What it sets, without changing OHIF's code:
 *  - the data source: the archive's DICOMweb on the same origin (/dicomweb; the session cookie
 *    is the login), multipart WADO-RS as the archive serves it (singlepart: false, the type
 *    parameter without quotation marks);
 *  - person names in full (PS3.5 6.2.1: the alphabetic, ideographic and phonetic groups of a
 *    PN): OHIF shows the alphabetic group alone, so the study list's data source (a thin
 *    wrapper of OHIF's DICOMweb one, below) and the viewport overlay (a customization) show
 *    "张三 (ZHANG SAN)", and the list's search finds a name typed in Hanzi;
 *  - the study list's columns in the user's language; the language itself (zh-CN by default);
 *  - window presets per modality from the mappings (window_presets.yaml), the image's own
 *    window first and those suited to the series' body part next;
 *  - hanging protocols per modality (the layout a study opens in); layouts up to 4 × 4;
 *  - cine: a multi-frame series plays as soon as it is shown;
 *  - two buttons on a study, each opening a page of the project in a window of its own: film
 *    printing (/film, Alt+F) and consultation links (/share, Alt+S);
 *  - a second window on the same study (another monitor) showing the series after the one in
 *    the active viewport (Alt+N), or the patient's prior study (Alt+P: the latest before the
 *    one on screen, found by QIDO-RS on the Patient ID; again, the one before that);
 *  - what a change of window, zoom, pan or rotation applies to (Alt+W goes round the three;
 *    Alt+L links every viewport and back; the button shows which, orange when not the series):
 *    the series in its viewport (cornerstone's stack viewport), the image on screen alone
 *    (kept per imageId and put back each time the stack shows that image, the series' own for
 *    the others; such an image is marked), or every viewport of the window (OHIF's voi and
 *    zoompan synchronizers, and one of ours for rotation and flips);
 *  - the order of a series' images: by slice position (OHIF's default), instance number or
 *    acquisition time (Alt+O, remembered in the browser; the study is shown again in it);
 *  - the annotations' font size, line width and colour: OHIF's, large, large and cyan (Alt+A);
 *  - opened through a consultation link (pacs.shared): the one study, no study list.
 */
(function () {
  'use strict';

  var pacs = window.pacsViewer || {};
  var labels = pacs.labels || {};
  var DICOMWEB = pacs.dicomweb || '/dicomweb';
  var EXTENSION = '@pacs/extension-viewer';
  var DATA_SOURCE = 'pacs';
  var PN_GROUPS = ['Alphabetic', 'Ideographic', 'Phonetic'];
  var ROUTER_BASE = '/viewer';  // the study list; pacs.web.viewer serves the page at every route below it
  var STUDY_ROUTE = ROUTER_BASE + '/viewer';  // a study: ?StudyInstanceUIDs=…

  function label(key, fallback) {
    return labels[key] || fallback;
  }

  // -- the language: the user's, until they choose another in OHIF's preferences ------------
  try {
    if (!window.localStorage.getItem('i18nextLng') && !/(^|;\s*)i18next=/.test(document.cookie)) {
      window.localStorage.setItem('i18nextLng', pacs.language || 'zh-CN');
    }
  } catch (e) {
    // no local storage (a private window): OHIF's own detection then
  }

  // -- what the viewer stores (measurements as SR, STOW-RS) goes with the session's CSRF token,
  // which the archive asks of a logged-in browser for every change (OHIF's DICOMweb client passes
  // no header but Authorization on; it sends with XMLHttpRequest, fetch is covered too) --------
  var SAFE_METHODS = /^(GET|HEAD|OPTIONS)$/i;

  function sameOrigin(url) {
    try {
      return new URL(String(url), window.location.href).origin === window.location.origin;
    } catch (e) {
      return false;
    }
  }

  if (pacs.csrf) {
    var xhrOpen = XMLHttpRequest.prototype.open;
    XMLHttpRequest.prototype.open = function (method, url) {
      xhrOpen.apply(this, arguments);
      if (!SAFE_METHODS.test(method) && sameOrigin(url)) {
        this.setRequestHeader('X-CSRF-Token', pacs.csrf);
      }
    };
    var windowFetch = window.fetch;
    window.fetch = function (resource, init) {
      var method = (init && init.method) || (resource && resource.method) || 'GET';
      var url = typeof resource === 'string' || resource instanceof URL ? resource : resource && resource.url;
      if (!SAFE_METHODS.test(method) && sameOrigin(url)) {
        var headers = new Headers((init && init.headers) || (resource && resource.headers) || {});
        headers.set('X-CSRF-Token', pacs.csrf);
        init = Object.assign({}, init, { headers: headers });
      }
      return windowFetch.call(this, resource, init);
    };
  }

  // -- person names (PS3.5 6.2.1, PS3.18 F.2.2) ----------------------------------------------

  /** A PN value's groups, whether DICOM JSON ({Alphabetic, Ideographic}), OHIF's naturalized
   * form (an array of those) or a string with "=" between the groups. */
  function nameGroups(value) {
    if (value === undefined || value === null) {
      return {};
    }
    if (Array.isArray(value)) {
      return nameGroups(value[0]);
    }
    if (typeof value === 'string') {
      var parts = value.split('=');
      var groups = {};
      PN_GROUPS.forEach(function (group, i) {
        if (parts[i]) {
          groups[group] = parts[i];
        }
      });
      return groups;
    }
    if (typeof value === 'object') {
      var found = {};
      PN_GROUPS.forEach(function (group) {
        if (value[group]) {
          found[group] = String(value[group]);
        }
      });
      return found;
    }
    return {};
  }

  function components(group) {
    return group.split('^').map(function (c) { return c.trim(); }).filter(Boolean);
  }

  /** "张三 (ZHANG SAN)": the ideographic group (its components without spaces, as written in
   * Chinese), the alphabetic one beside it; a name without Hanzi as OHIF shows it ("DOE, JOHN"). */
  function formatName(value) {
    var groups = nameGroups(value);
    var alphabetic = groups.Alphabetic ? components(groups.Alphabetic) : [];
    var ideographic = groups.Ideographic ? components(groups.Ideographic).join('') : '';
    if (ideographic) {
      return alphabetic.length ? ideographic + ' (' + alphabetic.join(' ') + ')' : ideographic;
    }
    if (!alphabetic.length) {
      return '';
    }
    return alphabetic.length > 1 ? alphabetic[0] + ', ' + alphabetic.slice(1).join(' ') : alphabetic[0];
  }

  // -- the data source: OHIF's DICOMweb one, with names in full in the study list -----------

  var PATIENT_NAME = '00100010';
  var REFERRING_PHYSICIAN = '00080090';

  function createDataSource(configuration, servicesManager, extensionManager) {
    var base = extensionManager.getModuleEntry('@ohif/extension-default.dataSourcesModule.dicomweb');
    var inner = base.createDataSource(configuration, servicesManager, extensionManager);
    var studies = Object.assign({}, inner.query.studies, {
      // QIDO-RS (PS3.18 10.6) as OHIF asks it, each row's names then made from the answer's
      // every group (OHIF's own rows keep the alphabetic one alone).
      search: function (params) {
        var mapped = inner.query.studies.mapParams(params, {
          supportsFuzzyMatching: configuration.supportsFuzzyMatching,
          supportsWildcard: configuration.supportsWildcard,
        }) || {};
        delete mapped.studyInstanceUid;
        delete mapped.seriesInstanceUid;
        return inner.query.instances.search(undefined, mapped).then(function (answer) {
          var rows = inner.query.studies.processResults(answer || []);
          rows.forEach(function (row, i) {
            var found = answer[i] || {};
            var patient = formatName((found[PATIENT_NAME] || {}).Value);
            var referring = formatName((found[REFERRING_PHYSICIAN] || {}).Value);
            if (patient) {
              row.patientName = patient;
            }
            if (referring) {
              row.referringPhysicianName = referring;
            }
          });
          return rows;
        });
      },
    });
    return Object.assign({}, inner, { query: Object.assign({}, inner.query, { studies: studies }) });
  }

  // -- window presets (window_presets.yaml) -----------------------------------------------------

  function presetsFor(modality) {
    var items = (pacs.presets || {})[modality] || [];
    var english = String(pacs.language || '').indexOf('en') === 0;
    return items.map(function (p, i) {
      var parts = p.body_parts && p.body_parts.length ? ' · ' + p.body_parts.join('/') : '';
      return {
        id: 'pacs-' + modality.toLowerCase() + '-' + i,
        description: (english ? p.name_en : p.name) + parts,
        window: String(p.window),
        level: String(p.level),
        bodyParts: p.body_parts || [],
      };
    });
  }

  var windowPresets = {};
  Object.keys(pacs.presets || {}).forEach(function (modality) {
    windowPresets[modality] = presetsFor(modality);
  });

  var ohifServices = null;  // OHIF's services, once the extension is registered

  /** The series of one modality in the viewports now: their own windows (Window Center and
   * Window Width of their first image, PS3.3 C.11.2.1.2) and Body Part Examined values. */
  function shownSeries(modality) {
    var own = [];
    var parts = [];
    if (!ohifServices) {
      return { own: own, parts: parts };
    }
    var grid = ohifServices.viewportGridService.getState();
    var viewports = grid.viewports instanceof Map ? Array.from(grid.viewports.values()) : Object.values(grid.viewports || {});
    viewports.forEach(function (viewport) {
      (viewport.displaySetInstanceUIDs || []).forEach(function (uid) {
        var displaySet = ohifServices.displaySetService.getDisplaySetByUID(uid);
        var first = displaySet && displaySet.Modality === modality && (displaySet.instances || [])[0];
        if (!first) {
          return;
        }
        var centre = [].concat(first.WindowCenter === undefined ? [] : first.WindowCenter)[0];
        var width = [].concat(first.WindowWidth === undefined ? [] : first.WindowWidth)[0];
        if (Number(width) > 0 && !own.some(function (w) { return w.window === String(width) && w.level === String(centre); })) {
          own.push({ id: 'pacs-own-' + own.length, description: label('overlay.own_window', "Image's own window"),
                     window: String(Number(width)), level: String(Number(centre)) });
        }
        if (first.BodyPartExamined) {
          parts.push(String(first.BodyPartExamined).toUpperCase());
        }
      });
    });
    return { own: own, parts: parts };
  }

  /** OHIF's W/L menu asks for the presets of a modality each time the series in a viewport
   * change: the image's own window first, then the presets suited to its body part, then the
   * rest (OHIF's own presets for a modality the mappings do not name). */
  function presetsInOrder(defaults) {
    return new Proxy(Object.assign({}, defaults, windowPresets), {
      get: function (target, modality) {
        var listed = target[modality];
        if (typeof modality !== 'string' || !Array.isArray(listed)) {
          return listed;
        }
        var shown = shownSeries(modality);
        var suited = function (p) {
          return (p.bodyParts || []).some(function (part) { return shown.parts.indexOf(part) >= 0; });
        };
        return shown.own.concat(listed.filter(suited), listed.filter(function (p) { return !suited(p); }));
      },
    });
  }

  // -- hanging protocols per modality --------------------------------------------------------

  /** One viewport showing the series a rule picks (the first series with images otherwise). */
  function oneByOne(id, name, modalities) {
    return {
      id: id,
      name: name,
      locked: true,
      protocolMatchingRules: [{
        attribute: 'ModalitiesInStudy',
        constraint: { includes: modalities },
        required: true,
        weight: 2,
      }],
      displaySetSelectors: {
        images: {
          seriesMatchingRules: [
            { attribute: 'numImageFrames', constraint: { greaterThan: { value: 0 } }, required: true, weight: 1 },
            { attribute: 'Modality', constraint: { includes: modalities }, weight: 2 },
            // the series the address names (initialSeriesInstanceUID: a second window's)
            { attribute: 'isDisplaySetFromUrl', constraint: { equals: true }, weight: 20 },
          ],
        },
      },
      stages: [{
        name: name,
        viewportStructure: { layoutType: 'grid', properties: { rows: 1, columns: 1 } },
        viewports: [{
          viewportOptions: { toolGroupId: 'default', allowUnmatchedView: true },
          displaySets: [{ id: 'images' }],
        }],
      }],
    };
  }

  var hangingProtocols = [
    { name: EXTENSION + '.cross-sectional', protocol: oneByOne(EXTENSION + '.cross-sectional',
      'CT / MR / PET', ['CT', 'MR', 'PT', 'NM']) },
    { name: EXTENSION + '.projection', protocol: oneByOne(EXTENSION + '.projection',
      'DX / CR / MG', ['DX', 'CR', 'MG', 'RF', 'XA']) },
  ];

  var extension = {
    id: EXTENSION,
    version: '1.0.0',
    preRegistration: function (options) {
      ohifServices = options.servicesManager.services;
    },
    getDataSourcesModule: function () {
      return [{ name: 'dicomweb', type: 'webApi', createDataSource: createDataSource }];
    },
    getHangingProtocolModule: function () {
      return hangingProtocols;
    },
  };

  // -- the order of a series' images (OHIF's instanceSortingCriteria customization) ----------

  var SORT_KEY = 'pacs.viewer.sort';
  var SORTS = ['position', 'instance', 'time'];

  function number(value) {
    var n = parseFloat([].concat(value === undefined ? [] : value)[0]);
    return isNaN(n) ? 0 : n;
  }

  /** An instance's acquisition moment (PS3.3 C.7.6.1: Acquisition Date Time, or Acquisition Date
   * and Time, or Content Date and Time) as a sortable string. */
  function acquired(instance) {
    return String(instance.AcquisitionDateTime || ((instance.AcquisitionDate || instance.ContentDate || '') +
                  (instance.AcquisitionTime || instance.ContentTime || '')));
  }

  var sortFunctions = {
    pacsInstanceNumber: function (a, b) {
      return number(a.InstanceNumber) - number(b.InstanceNumber);
    },
    pacsAcquisitionTime: function (a, b) {
      var x = acquired(a);
      var y = acquired(b);
      return x < y ? -1 : x > y ? 1 : number(a.InstanceNumber) - number(b.InstanceNumber);
    },
  };

  function chosenSort() {
    try {
      var chosen = window.localStorage.getItem(SORT_KEY);
      return SORTS.indexOf(chosen) >= 0 ? chosen : 'position';
    } catch (e) {
      return 'position';
    }
  }

  var instanceSorting = {
    sortFunctions: sortFunctions,
    // no name: OHIF sorts by slice position when the series allows it, by instance number otherwise
    defaultSortFunctionName: { instance: 'pacsInstanceNumber', time: 'pacsAcquisitionTime' }[chosenSort()] || '',
  };

  function nextSort() {
    var following = SORTS[(SORTS.indexOf(chosenSort()) + 1) % SORTS.length];
    try {
      window.localStorage.setItem(SORT_KEY, following);
    } catch (e) {
      return;
    }
    window.location.reload();  // OHIF sorts a series' images when it makes its display set
  }

  // -- what a change of window, zoom, pan or rotation applies to: the image on screen alone,
  // its series (cornerstone's stack viewport: one window and one view for all its images), or
  // every viewport of the window (OHIF's voi and zoompan synchronizers, and one of ours for the
  // rotation) -------------------------------------------------------------------------------

  var SCOPES = ['series', 'image', 'all'];
  // The scope and the images' own windows and views are this browser tab's: kept across a reload
  // (a change of the images' order reloads the page) and not carried into another window or the
  // next day, where a scope other than the series' would surprise.
  var SCOPE_KEY = 'pacs.viewer.scope';
  var OWN_VIEWS_KEY = 'pacs.viewer.ownViews';

  function kept(key, fallback) {
    try {
      var value = window.sessionStorage.getItem(key);
      return value ? JSON.parse(value) : fallback;
    } catch (e) {
      return fallback;
    }
  }

  function keep(key, value) {
    try {
      window.sessionStorage.setItem(key, JSON.stringify(value));
    } catch (e) {
      return;  // storage full or refused: kept until the page goes, as before
    }
  }

  var scope = kept(SCOPE_KEY, 'series');
  if (SCOPES.indexOf(scope) < 0) {
    scope = 'series';
  }
  var ROTATION_SYNC = 'pacsrotation';
  var LINK_GROUPS = [{ type: 'voi', id: 'pacs-voi-all' }, { type: 'zoompan', id: 'pacs-zoompan-all' },
                     { type: ROTATION_SYNC, id: 'pacs-rotation-all' }];

  function gridViewports() {
    var grid = ohifServices.viewportGridService.getState();
    return grid.viewports instanceof Map ? Array.from(grid.viewports.values()) : Object.values(grid.viewports || {});
  }

  /** A synchronizer of the rotation and flips of the viewports it links (OHIF's zoompan one
   * keeps their zoom and pan alike, not their orientation). */
  function rotationSynchronizer(id) {
    var core = window.cornerstone;
    var tools = window.cornerstoneTools;
    return tools.SynchronizerManager.createSynchronizer(id, core.Enums.Events.CAMERA_MODIFIED, function (sync, source, target) {
      var from = core.getRenderingEngine(source.renderingEngineId).getViewport(source.viewportId);
      var to = core.getRenderingEngine(target.renderingEngineId).getViewport(target.viewportId);
      if (!from || !to || !from.getViewPresentation || !to.setViewPresentation) {
        return;
      }
      var want = from.getViewPresentation({ rotation: true, flipHorizontal: true, flipVertical: true });
      var has = to.getViewPresentation({ rotation: true, flipHorizontal: true, flipVertical: true });
      if (Math.abs(want.rotation - has.rotation) > 0.01 || want.flipHorizontal !== has.flipHorizontal ||
          want.flipVertical !== has.flipVertical) {
        to.setViewPresentation({ rotation: want.rotation, flipHorizontal: want.flipHorizontal,
                                 flipVertical: want.flipVertical });
        to.render();
      }
    });
  }

  function applyLink() {
    if (!ohifServices || !window.cornerstoneTools) {
      return;
    }
    var sync = ohifServices.syncGroupService;
    if (!sync.getSyncCreatorForType(ROTATION_SYNC)) {
      sync.addSynchronizerType(ROTATION_SYNC, rotationSynchronizer);
    }
    gridViewports().forEach(function (gridViewport) {
      var id = gridViewport.viewportId || (gridViewport.viewportOptions || {}).viewportId;
      var viewport = ohifServices.cornerstoneViewportService.getCornerstoneViewport(id);
      if (!viewport) {
        return;
      }
      var engine = viewport.getRenderingEngine().id;
      LINK_GROUPS.forEach(function (group) {
        if (scope === 'all') {
          sync.addViewportToSyncGroup(id, engine, { type: group.type, id: group.id, source: true, target: true });
        } else {
          sync.removeViewportFromSyncGroup(id, engine, group.id);
        }
      });
    });
  }

  function setScope(chosen) {
    scope = chosen;
    keep(SCOPE_KEY, scope);
    applyLink();
    refreshButtons();
  }

  function nextScope() {
    setScope(SCOPES[(SCOPES.indexOf(scope) + 1) % SCOPES.length]);
  }

  window.setInterval(function () {
    if (scope === 'all') {
      applyLink();  // viewports made since (another layout) join the link too
    }
  }, 500);

  // Images with a window or view of their own (set while the scope was "this image"), by their
  // imageId: {voi: {lower, upper}, view: cornerstone's view presentation (zoom, pan, rotation,
  // flips)}. A stack viewport shows every image in the window and view it has, so each time it
  // shows another image, that image's own are put back, or the series' for an image without.
  var ownViews = kept(OWN_VIEWS_KEY, {});
  var stacks = new WeakMap();  // per stack viewport: the image it settled on and the series' window and view
  var applying = false;  // our own changes, not the radiologist's
  var EVENTS = { voi: 'CORNERSTONE_VOI_MODIFIED', view: 'CORNERSTONE_CAMERA_MODIFIED',
                 image: 'CORNERSTONE_STACK_NEW_IMAGE' };
  var KINDS = ['voi', 'view'];

  function stackViewportOf(event) {
    var core = window.cornerstone;
    var enabled = core && event.target instanceof Element ? core.getEnabledElement(event.target) : null;
    var viewport = enabled && enabled.viewport;
    return viewport && viewport.type === 'stack' && viewport.getViewPresentation ? viewport : null;
  }

  /** What the viewport shows now of one kind: its window (null: each image its own, from its
   * Window Center and Width, as cornerstone does until a window is set) or its view. */
  function shownNow(viewport, kind) {
    if (kind === 'voi') {
      var properties = viewport.getProperties();
      return properties.isComputedVOI || !properties.voiRange ? null :
        { lower: properties.voiRange.lower, upper: properties.voiRange.upper };
    }
    return viewport.getViewPresentation();
  }

  function same(a, b) {
    return JSON.stringify(a) === JSON.stringify(b);
  }

  function show(viewport, kind, value) {
    if (kind === 'voi') {
      var range = value || (viewport._getVOIRangeForCurrentImage && viewport._getVOIRangeForCurrentImage());
      if (range) {
        viewport.setProperties({ voiRange: range });
        if (!value) {
          viewport.voiUpdatedWithSetProperties = false;  // the next images their own window again
        }
      }
    } else if (value) {
      viewport.setViewPresentation(value);
    }
  }

  /** A mark on a viewport whose image has a window or view of its own, not its series'. */
  function markOwn(viewport, own) {
    var element = viewport.element;
    var mark = element && element.querySelector('.pacs-own-view');
    if (!element || (!mark && !own)) {
      return;
    }
    if (!mark) {
      mark = document.createElement('div');
      mark.className = 'pacs-own-view';
      mark.setAttribute('style', 'position:absolute;bottom:30px;left:50%;transform:translateX(-50%);z-index:10;' +
                        'padding:2px 8px;border-radius:4px;background:#7a4b00;color:#fff;font-size:12px;pointer-events:none');
      mark.textContent = label('tools.own_view', 'This image: a window and view of its own');
      element.appendChild(mark);
    }
    mark.style.display = own ? 'block' : 'none';
  }

  function onNewImage(event) {
    var viewport = stackViewportOf(event);
    if (!viewport) {
      return;
    }
    var state = stacks.get(viewport);
    var first = viewport.getImageIds()[0];
    if (!state || state.first !== first) {  // a new viewport, or another series in it
      state = { first: first, series: { voi: shownNow(viewport, 'voi'), view: shownNow(viewport, 'view') }, own: false };
      stacks.set(viewport, state);
    }
    state.settled = event.detail.imageId;
    var own = ownViews[state.settled];
    if (!own && !state.own) {
      state.series = { voi: shownNow(viewport, 'voi'), view: shownNow(viewport, 'view') };
      markOwn(viewport, false);
      return;
    }
    applying = true;
    try {
      KINDS.forEach(function (kind) {
        var wanted = own && own[kind] ? own[kind] : state.series[kind];
        if (!same(wanted, shownNow(viewport, kind))) {
          show(viewport, kind, wanted);
        }
      });
    } finally {
      applying = false;
    }
    state.own = !!own;
    markOwn(viewport, state.own);
    viewport.render();
  }

  /** The radiologist changed the window or the view of the image on screen: it is this
   * image's own, or the series' (every image's, those with their own too). */
  function onChange(kind, event) {
    var viewport = applying ? null : stackViewportOf(event);
    var state = viewport && stacks.get(viewport);
    if (!state || viewport.getCurrentImageId() !== state.settled) {
      return;  // an image on its way: cornerstone carries the last one's window and view over
    }
    var now = shownNow(viewport, kind);
    var own = ownViews[state.settled];
    if (same(now, own && own[kind] ? own[kind] : state.series[kind])) {
      return;
    }
    if (scope === 'image') {
      own = ownViews[state.settled] = own || {};
      own[kind] = now;
      keep(OWN_VIEWS_KEY, ownViews);
      state.own = true;
      markOwn(viewport, true);
      return;
    }
    state.series[kind] = now;
    viewport.getImageIds().forEach(function (imageId) {
      if (ownViews[imageId]) {
        delete ownViews[imageId][kind];
        if (!ownViews[imageId].voi && !ownViews[imageId].view) {
          delete ownViews[imageId];
        }
      }
    });
    keep(OWN_VIEWS_KEY, ownViews);
    state.own = !!ownViews[state.settled];
    markOwn(viewport, state.own);
  }

  // Listened to on the document as the events go down to a viewport's element (capture): every
  // viewport, whenever made, before OHIF's and the synchronizers' own listeners.
  document.addEventListener(EVENTS.image, onNewImage, true);
  KINDS.forEach(function (kind) {
    document.addEventListener(EVENTS[kind], function (event) { onChange(kind, event); }, true);
  });

  // -- the annotations' font and colour (cornerstone's tool styles), chosen from a few --------

  var STYLE_KEY = 'pacs.viewer.annotations';
  var ANNOTATION_STYLES = {
    standard: {},  // OHIF's: yellow, 15 px
    large: { textBoxFontSize: '20px', lineWidth: '2.5' },
    // the text cyan in every state; a selected or highlighted line stays green, as cornerstone draws it
    cyan: { textBoxFontSize: '20px', lineWidth: '2.5', color: 'rgb(0, 255, 255)', textBoxColor: 'rgb(0, 255, 255)',
            textBoxColorSelected: 'rgb(0, 255, 255)', textBoxColorHighlighted: 'rgb(0, 255, 255)' },
  };
  var STYLE_NAMES = Object.keys(ANNOTATION_STYLES);
  var ohifStyle = null;  // the global style OHIF set, which each choice starts from
  var appliedStyle = null;

  function chosenStyle() {
    try {
      var chosen = window.localStorage.getItem(STYLE_KEY);
      return STYLE_NAMES.indexOf(chosen) >= 0 ? chosen : 'standard';
    } catch (e) {
      return 'standard';
    }
  }

  /** The chosen style over OHIF's, once OHIF has set its own (its tools are made with the first
   * viewport), and every viewport drawn again in it. */
  function applyStyle() {
    var tools = window.cornerstoneTools;
    var core = window.cornerstone;
    if (!tools || !core || appliedStyle === chosenStyle() || !core.getEnabledElements().length) {
      return;
    }
    var styles = tools.annotation.config.style;
    if (ohifStyle === null) {
      ohifStyle = Object.assign({}, (styles.getDefaultToolStyles() || {}).global);
    }
    appliedStyle = chosenStyle();
    styles.setDefaultToolStyles({ global: Object.assign({}, ohifStyle, ANNOTATION_STYLES[appliedStyle]) });
    core.getRenderingEngines().forEach(function (engine) { engine.render(); });
  }

  function nextStyle() {
    var following = STYLE_NAMES[(STYLE_NAMES.indexOf(chosenStyle()) + 1) % STYLE_NAMES.length];
    try {
      window.localStorage.setItem(STYLE_KEY, following);
    } catch (e) {
      return;
    }
    applyStyle();
    refreshButtons();
  }

  window.setInterval(applyStyle, 500);

  // -- a second window on the study: the series after the active viewport's -----------------

  function activeSeries() {
    var grid = ohifServices.viewportGridService.getState();
    var active = gridViewports().filter(function (v) { return v.viewportId === grid.activeViewportId; })[0];
    var uid = active && (active.displaySetInstanceUIDs || [])[0];
    var displaySet = uid && ohifServices.displaySetService.getDisplaySetByUID(uid);
    return displaySet ? displaySet.SeriesInstanceUID : '';
  }

  function nextSeries() {
    if (!ohifServices) {
      return '';
    }
    var series = [];
    ohifServices.displaySetService.getActiveDisplaySets().forEach(function (displaySet) {
      if (displaySet.StudyInstanceUID === studyOnScreen() && (displaySet.numImageFrames || 0) > 0 &&
          series.indexOf(displaySet.SeriesInstanceUID) < 0) {
        series.push(displaySet.SeriesInstanceUID);
      }
    });
    var at = series.indexOf(activeSeries());
    return series.length ? series[(at + 1) % series.length] : '';
  }

  var SECOND_WINDOW = 'pacs-viewer-2';

  /** The second window (drag it to the second monitor), the same one each time. */
  function openSecond(url) {
    return window.open(url, SECOND_WINDOW, 'popup,width=' + window.screen.availWidth + ',height=' + window.screen.availHeight);
  }

  function viewerAddress(study, series) {
    return STUDY_ROUTE + '?StudyInstanceUIDs=' + encodeURIComponent(study) +
      (series ? '&initialSeriesInstanceUID=' + encodeURIComponent(series) : '');
  }

  /** Another study in this window without loading the viewer again: OHIF's router follows the
   * new address (pushed, then announced by popstate as the Back button would) and its mode loads
   * the study, while the page, its scripts and the GPU context stay. Opening a study thus costs
   * the study's own time (about 0.2–0.7 s here) instead of a page load (about 2 s). False where
   * this window cannot: a consultation link's page shows its one study only. */
  function openStudy(study, series) {
    if (pacs.shared || !study || window.location.pathname.indexOf(ROUTER_BASE) !== 0) {
      return false;
    }
    var address = viewerAddress(study, series);
    if (window.location.pathname + window.location.search !== address) {
      window.history.pushState({}, '', address);
      window.dispatchEvent(new PopStateEvent('popstate', { state: {} }));
    }
    return true;
  }

  /** A study in another of the viewer's windows: in place where that window already runs the
   * viewer, else loaded there. */
  function showIn(target, study, series) {
    if (!target) {
      return;
    }
    try {
      if (target.pacsViewer && target.pacsViewer.open && target.pacsViewer.open(study, series)) {
        return;
      }
    } catch (error) {
      // a page of another origin, or one still loading: the address below loads the viewer anew
    }
    target.location.href = viewerAddress(study, series);
  }

  function secondWindow() {
    var uid = studyOnScreen();
    if (uid) {
      showIn(openSecond(''), uid, nextSeries());
    }
  }

  // -- the patient's prior study in the second window, to compare on two monitors ------------

  var STUDY_UID = '0020000D';
  var STUDY_DATE = '00080020';
  var STUDY_TIME = '00080030';
  var priorOpened = '';  // the prior last opened: the next time, the one before it
  var priorMissing = false;

  /** The first image of the study on screen (its patient, its date). */
  function instanceOnScreen() {
    var found = null;
    (ohifServices ? ohifServices.displaySetService.getActiveDisplaySets() : []).forEach(function (displaySet) {
      if (!found && displaySet.StudyInstanceUID === studyOnScreen() && (displaySet.instances || []).length) {
        found = displaySet.instances[0];
      }
    });
    return found;
  }

  function tagValue(item, tag) {
    return String(((item[tag] || {}).Value || [''])[0]);
  }

  /** The patient's studies before the one on screen, the latest first (QIDO-RS, PS3.18 10.6);
   * the patient's other studies, the latest first, when none is earlier. */
  function priorStudies(instance) {
    var url = DICOMWEB + '/studies?PatientID=' + encodeURIComponent(instance.PatientID) +
      '&includefield=' + STUDY_DATE + ',' + STUDY_TIME;
    return window.fetch(url, { headers: { Accept: 'application/dicom+json' }, credentials: 'same-origin' })
      .then(function (answer) { return answer.status === 204 ? [] : answer.json(); })
      .then(function (found) {
        var when = String(instance.StudyDate || '') + String(instance.StudyTime || '');
        var others = (found || []).map(function (item) {
          return { uid: tagValue(item, STUDY_UID), when: tagValue(item, STUDY_DATE) + tagValue(item, STUDY_TIME) };
        }).filter(function (study) { return study.uid && study.uid !== studyOnScreen(); });
        others.sort(function (a, b) { return a.when < b.when ? 1 : a.when > b.when ? -1 : 0; });
        var earlier = others.filter(function (study) { return study.when < when; });
        return (earlier.length ? earlier : others).map(function (study) { return study.uid; });
      });
  }

  function priorWindow() {
    var instance = instanceOnScreen();
    if (!instance || !instance.PatientID) {
      return;
    }
    // opened now, while the key press lets a page open a window; its address once the archive answered
    var second = openSecond('');
    var closeBlank = function () {
      if (second && !second.closed && second.location.href === 'about:blank') {
        second.close();  // opened for a prior there is none of (or the archive did not answer)
      }
    };
    priorStudies(instance).then(function (priors) {
      priorMissing = !priors.length;
      refreshButtons();
      if (!priors.length) {
        closeBlank();
        return;
      }
      priorOpened = priors[(priors.indexOf(priorOpened) + 1) % priors.length];
      showIn(second, priorOpened, '');
    }, closeBlank);
  }

  // -- the project's pages for the study on screen, in windows of their own ------------------

  var tools = pacs.tools || {};

  function studyOnScreen() {
    var query = new URLSearchParams(window.location.search);
    return (query.get('StudyInstanceUIDs') || '').split(',')[0];
  }

  function openTool(name) {
    var uid = studyOnScreen();
    if (!tools[name] || !uid) {
      return;
    }
    window.open(tools[name] + '?StudyInstanceUIDs=' + encodeURIComponent(uid), 'pacs-' + name);
  }

  /** The buttons over the viewer, each with its key (Alt+key) and what it does; its text from
   * the catalogues (a function: the text may tell the state). */
  var BUTTONS = [
    { id: 'link', key: 'W', action: nextScope,
      text: function () { return label('tools.scope_' + scope, 'W/L, zoom, rotation: ' + scope); } },
    // Alt+L: every viewport linked, or back to the series
    { id: 'link-all', key: 'L', hidden: true, action: function () { setScope(scope === 'all' ? 'series' : 'all'); } },
    { id: 'sort', key: 'O', action: nextSort,
      text: function () { return label('tools.sort_' + chosenSort(), chosenSort()); } },
    { id: 'style', key: 'A', action: nextStyle,
      text: function () { return label('tools.style_' + chosenStyle(), chosenStyle()); } },
    { id: 'window', key: 'N', action: secondWindow, text: function () { return label('tools.window', 'Second window'); } },
    { id: 'prior', key: 'P', action: priorWindow, shown: !pacs.shared,  // a link's one study has no prior
      text: function () { return priorMissing ? label('tools.no_prior', 'No prior study') : label('tools.prior', 'Prior study'); } },
    { id: 'film', key: 'F', action: function () { openTool('film'); }, shown: !!tools.film,
      text: function () { return label('tools.film', 'film'); } },
    { id: 'share', key: 'S', action: function () { openTool('share'); }, shown: !!tools.share,
      text: function () { return label('tools.share', 'share'); } },
  ].filter(function (button) { return button.shown !== false; });

  function refreshButtons() {
    BUTTONS.forEach(function (button) {
      var element = document.getElementById('pacs-tool-' + button.id);
      if (element) {
        element.textContent = button.text() + ' (Alt+' + button.key + ')';
        element.setAttribute('aria-pressed', button.id === 'link' ? String(scope !== 'series') : 'false');
        if (button.id === 'link') {  // another scope than cornerstone's own stands out
          element.style.background = scope === 'series' ? '#041c4a' : '#7a4b00';
        }
      }
    });
  }

  function keys() {
    window.addEventListener('keydown', function (event) {
      if (!event.altKey || event.ctrlKey || event.metaKey || !studyOnScreen()) {
        return;
      }
      var key = String(event.key).toUpperCase();
      var spec = BUTTONS.filter(function (b) { return b.key === key; })[0];
      if (spec) {
        event.preventDefault();
        spec.action();
      }
    }, true);
  }

  function toolButtons() {
    keys();
    if (pacs.shared) {
      return;  // a consultation link: the keys, no buttons of the project's over the viewer
    }
    var bar = document.createElement('div');
    bar.id = 'pacs-tools';
    // at the foot of the study panel, clear of OHIF's toolbar and of the images' corners
    bar.setAttribute('style', 'position:fixed;bottom:10px;left:8px;width:264px;z-index:50;display:none;' +
                     'flex-direction:column;gap:6px');
    BUTTONS.forEach(function (spec) {
      if (spec.hidden) {
        return;
      }
      var button = document.createElement('button');
      button.type = 'button';
      button.id = 'pacs-tool-' + spec.id;
      button.title = 'Alt+' + spec.key;
      button.setAttribute('style', 'background:#041c4a;color:#5acce6;border:1px solid #3a3f99;border-radius:4px;' +
                          'padding:4px 10px;font-size:13px;cursor:pointer;text-align:left');
      button.addEventListener('click', function () { spec.action(); });
      bar.appendChild(button);
    });
    document.body.appendChild(bar);
    refreshButtons();
    var shown = function () {
      bar.style.display = window.location.pathname.indexOf(STUDY_ROUTE) === 0 && studyOnScreen() ? 'flex' : 'none';
    };
    shown();
    window.setInterval(shown, 500);  // OHIF's router changes the path without a page load
  }

  if (document.body) {
    toolButtons();
  } else {
    document.addEventListener('DOMContentLoaded', toolButtons);
  }

  // -- the overlay: the patient's name in full, ID, study and series -------------------------

  function overlayItem(id, title, condition, content) {
    return { id: id, inheritsFrom: 'ohif.overlayItem', label: '', title: title, condition: condition,
             contentF: content };
  }

  var topLeft = [
    overlayItem('PatientName', label('overlay.patient', 'Patient'),
      function (props) { return props.referenceInstance && props.referenceInstance.PatientName; },
      function (props) { return formatName(props.referenceInstance.PatientName); }),
    overlayItem('PatientID', label('overlay.id', 'ID'),
      function (props) { return props.referenceInstance && props.referenceInstance.PatientID; },
      function (props) {
        var i = props.referenceInstance;
        return [i.PatientID, i.PatientSex, i.PatientAge].filter(Boolean).join('  ');
      }),
    overlayItem('StudyDate', 'Study date',
      function (props) { return props.referenceInstance && props.referenceInstance.StudyDate; },
      function (props) { return props.formatters.formatDate(props.referenceInstance.StudyDate); }),
    overlayItem('SeriesDescription', 'Series description',
      function (props) { return props.referenceInstance && props.referenceInstance.SeriesDescription; },
      function (props) { return props.referenceInstance.SeriesDescription; }),
  ];

  // -- the study list's columns in the user's language ---------------------------------------

  function relabel(columns) {
    return columns.map(function (column) {
      var text = labels['column.' + column.id];
      if (!text) {
        return column;
      }
      return Object.assign({}, column, { meta: Object.assign({}, column.meta, { label: text }) });
    });
  }

  // -- the study list's own words: OHIF 3.13 writes a few of them into its page untranslated
  // ("Study List", "Launch workflow" ...), so the list's text is put in the user's language as
  // it is drawn ------------------------------------------------------------------------------

  var LIST_TEXTS = {
    'Study List': label('study_list', 'Study List'),
    'Select a study': label('list.select', 'Select a study'),
    'Launch workflow': label('list.launch', 'Launch workflow'),
    'Reset': label('list.reset', 'Reset'),
    'View': label('list.view', 'View'),
    'Start': label('list.start', 'Start'),
    'End': label('list.end', 'End'),
  };
  var LIST_RANGE = /^(\d+)-(\d+) of (\d+)$/;  // "1-25 of 120"

  function onStudyList() {
    return window.location.pathname.replace(/\/$/, '') === ROUTER_BASE;
  }

  function translateList(root) {
    if (!onStudyList() || !root) {
      return;
    }
    var walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    var node;
    while ((node = walker.nextNode())) {
      var text = node.nodeValue.trim();
      var range = LIST_RANGE.exec(text);
      if (LIST_TEXTS[text] && LIST_TEXTS[text] !== text) {
        node.nodeValue = node.nodeValue.replace(text, LIST_TEXTS[text]);
      } else if (range) {
        node.nodeValue = label('list.range', '{from}-{to} of {total}').replace('{from}', range[1])
          .replace('{to}', range[2]).replace('{total}', range[3]);
      }
    }
    Array.prototype.forEach.call(root.querySelectorAll ? root.querySelectorAll('input[placeholder]') : [], function (input) {
      var shown = LIST_TEXTS[input.getAttribute('placeholder')];
      if (shown) {
        input.setAttribute('placeholder', shown);
      }
    });
  }

  function watchList() {
    var pending = false;
    new MutationObserver(function () {
      if (pending) {
        return;
      }
      pending = true;
      window.requestAnimationFrame(function () {
        pending = false;
        translateList(document.body);
      });
    }).observe(document.body, { childList: true, subtree: true, characterData: true });
    translateList(document.body);
  }

  if (document.body) {
    watchList();
  } else {
    document.addEventListener('DOMContentLoaded', watchList);
  }

  // -- the layout picker: up to 4 × 4 viewports (OHIF offers 3 rows × 4 columns) -------------

  var LAYOUT_MAX = 4;

  function largerLayouts(buttons) {
    return (buttons || []).map(function (button) {
      if (!button || button.id !== 'Layout') {
        return button;
      }
      return Object.assign({}, button, { props: Object.assign({}, button.props, { rows: LAYOUT_MAX, columns: LAYOUT_MAX }) });
    });
  }

  window.config = {
    name: 'pacs',
    routerBasename: ROUTER_BASE,
    extensions: [extension],
    modes: [],
    showStudyList: !pacs.shared,  // a consultation link opens its one study, no list
    // The header's patient box shows the alphabetic group only (OHIF formats it itself): the
    // overlay shows the patient instead.
    showPatientInfo: 'disabled',
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    // A multi-frame series (ultrasound loops, OHIF's autoCineModalities) plays when shown, at the
    // rate of its Frame Time (0018,1063); without this OHIF opens its cine player paused.
    autoPlayCine: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    investigationalUseDialog: { option: 'never' },
    maxNumRequests: { interaction: 100, thumbnail: 75, prefetch: 25 },
    showErrorDetails: 'always',
    defaultDataSourceName: DATA_SOURCE,
    dataSources: [{
      namespace: EXTENSION + '.dataSourcesModule.dicomweb',
      sourceName: DATA_SOURCE,
      configuration: {
        friendlyName: 'PACS',
        name: DATA_SOURCE,
        wadoUriRoot: DICOMWEB,
        qidoRoot: DICOMWEB,
        wadoRoot: DICOMWEB,
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    }],
    modesConfiguration: {
      '@ohif/mode-longitudinal': {
        hangingProtocol: { $set: hangingProtocols.map(function (p) { return p.name; }).concat(['default']) },
      },
    },
    customizationService: {
      global: {
        'viewportOverlay.topLeft': { $set: topLeft },
        'cornerstone.windowLevelPresets': { $apply: presetsInOrder },
        'workList.columns': { $apply: relabel },
        'cornerstone.toolbarButtons': { $apply: largerLayouts },
        'ohif.tours': { $set: [] },  // the first-visit walkthrough would cover the images
        'instanceSortingCriteria': { $set: instanceSorting },
      },
    },
    httpErrorHandler: function (error) {
      if (error && error.status === 401) {
        window.location.assign('/login?next=' + encodeURIComponent(window.location.pathname + window.location.search));
      }
    },
  };

  // For the project's other pages (a study from the reading worklist in the open viewer, see
  // /static/viewer_window.js), the tests and the benchmark.
  window.pacsViewer = Object.assign(pacs, { formatName: formatName, open: openStudy });
})();
