// The visitor's photos, kept by the browser for this origin only (IndexedDB: private to the site, survives
// reloads and browser restarts, never sent anywhere). One database per model, since embeddings are only
// comparable within one:
//   photos: sha256 of the file's bytes → { sha, values: Int8Array, scale, thumbnail: Blob, bytes }
//   names:  path relative to the folder added → { path, sha, folder }  (two names may share one photo)
//   handles: 'folder' → the FileSystemDirectoryHandle last picked (where the browser has the picker)
// Each batch is one transaction: a closed tab loses at most the batch in flight.
const PREFIX = 'tuwen-photos';
const VERSION = 1;

export const databaseName = (fingerprint) => `${PREFIX}:${fingerprint}`;

const done = (request) => new Promise((resolve, reject) => {
  request.onsuccess = () => resolve(request.result);
  request.onerror = () => reject(request.error);
});

const finished = (tx) => new Promise((resolve, reject) => {
  tx.oncomplete = () => resolve();
  tx.onerror = () => reject(tx.error);
  tx.onabort = () => reject(tx.error || new DOMException('transaction aborted', 'AbortError'));
});

export async function openStore(fingerprint) {
  const request = indexedDB.open(databaseName(fingerprint), VERSION);
  request.onupgradeneeded = () => {
    const db = request.result;
    for (const [name, keyPath] of [['photos', 'sha'], ['names', 'path']]) {
      if (!db.objectStoreNames.contains(name)) db.createObjectStore(name, { keyPath });
    }
    if (!db.objectStoreNames.contains('handles')) db.createObjectStore('handles');
  };
  const db = await done(request);
  // Another tab clearing the photos (deleteDatabase) must not wait for this one to be closed by hand.
  db.onversionchange = () => db.close();
  return new PhotoStore(db);
}

class PhotoStore {
  constructor(db) {
    this.db = db;
  }

  // Every name and, without thumbnails, every photo: what search needs in memory.
  async load() {
    const tx = this.db.transaction(['photos', 'names'], 'readonly');
    const photos = new Map();
    const names = new Map();
    await Promise.all([
      cursorEach(tx.objectStore('photos'), (p) => photos.set(p.sha, { values: p.values, scale: p.scale, bytes: p.thumbnail ? p.thumbnail.size : 0 })),
      cursorEach(tx.objectStore('names'), (n) => names.set(n.path, { sha: n.sha, folder: n.folder })),
    ]);
    return { photos, names };
  }

  // One batch, atomically: new photos, names (new or re-pointed), names removed, photos no name uses.
  async commit({ photos = [], names = [], removeNames = [], removePhotos = [] }) {
    const tx = this.db.transaction(['photos', 'names'], 'readwrite');
    const photoStore = tx.objectStore('photos');
    const nameStore = tx.objectStore('names');
    for (const photo of photos) photoStore.put(photo);
    for (const name of names) nameStore.put(name);
    for (const path of removeNames) nameStore.delete(path);
    for (const sha of removePhotos) photoStore.delete(sha);
    await finished(tx);
  }

  async thumbnail(sha) {
    const photo = await done(this.db.transaction('photos').objectStore('photos').get(sha));
    return photo ? photo.thumbnail : null;
  }

  async handle() {
    return done(this.db.transaction('handles').objectStore('handles').get('folder'));
  }

  async keepHandle(handle) {
    const tx = this.db.transaction('handles', 'readwrite');
    tx.objectStore('handles').put(handle, 'folder');
    await finished(tx);
  }

  close() {
    this.db.close();
  }
}

function cursorEach(store, visit) {
  return new Promise((resolve, reject) => {
    const request = store.openCursor();
    request.onerror = () => reject(request.error);
    request.onsuccess = () => {
      const cursor = request.result;
      if (!cursor) return resolve();
      visit(cursor.value);
      cursor.continue();
    };
  });
}

// Deletes every photo database of this origin (every model's); resolves when they are gone.
export async function forgetAll(fingerprint) {
  const names = new Set([databaseName(fingerprint)]);
  if (indexedDB.databases) {
    for (const { name } of await indexedDB.databases()) if (name && name.startsWith(PREFIX)) names.add(name);
  }
  await Promise.all([...names].map((name) => new Promise((resolve, reject) => {
    const request = indexedDB.deleteDatabase(name);
    request.onsuccess = () => resolve();
    request.onerror = () => reject(request.error);
    // Blocked by a connection another tab holds open: it closes on versionchange, and then this succeeds.
  })));
}
