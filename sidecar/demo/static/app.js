// The demo page: the prospect list of the frontend contract's SPA, in plain JavaScript.
//
// It does what the contract's SPA does: connect with the user's token
// (auth: { token }), listen to prospect:created / updated / deleted and
// notification, show the same toasts, and refetch the list on every
// "connect" (the contract's 'socket-reconnected'). The list changes only
// through those events and refetches, never from the answers of the demo
// CRM API: a change made here shows up the way it shows up in another tab.
// Beyond the contract: auth is a function (socket.io-client calls it on every
// (re)connection, so a reconnect always sends the current token, the form the
// README recommends), and on "io server disconnect" (expired token) or a
// refused handshake (e.g. the demo restarted with a new secret) it fetches a
// fresh token before calling socket.connect().
'use strict';

(function () {
  const params = new URLSearchParams(location.search);
  const userId = params.get('user') || '1';
  const ttl = params.get('ttl');          // optional: short-lived tokens, to watch expiry

  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...children) => {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  };
  const fullName = (p) => [p.firstname, p.lastname].filter(Boolean).join(' ') || p.email || p.id;
  const clock = () => new Date().toLocaleTimeString('fr-FR');

  // ------------------------------------------------------------------ session (the SPA's login)

  let session = null;

  async function fetchSession() {
    const query = new URLSearchParams({ user: userId });
    if (ttl) query.set('ttl', ttl);
    const response = await fetch(`api/session?${query}`, { cache: 'no-store' });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new Error((data && data.error) || `HTTP ${response.status}`);
    session = data;
    return session;
  }

  // ------------------------------------------------------------------ CRM API

  async function api(method, path, body, retried) {
    const response = await fetch(path, {
      method,
      cache: 'no-store',
      headers: { Authorization: `Bearer ${session.token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && !retried) {   // expired token: log in again, once
      await fetchSession();
      return api(method, path, body, true);
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new Error((data && data.error) || `HTTP ${response.status}`);
    return data;
  }

  // ------------------------------------------------------------------ toasts, badge, log

  function showToast({ title, message, type = 'info', duration = 6000, action }) {
    const close = el('button', { className: 'toast-close', type: 'button', textContent: '×', title: 'Fermer' });
    const toast = el('div', { className: `toast toast-${type}` },
      el('div', { className: 'toast-title', textContent: title }),
      el('div', { className: 'toast-message', textContent: message }),
      action ? el('button', { className: 'toast-action', type: 'button', textContent: action.label,
                              onclick: action.onClick }) : null,
      close);
    const remove = () => toast.remove();
    close.onclick = remove;
    setTimeout(remove, duration);
    $('toasts').prepend(toast);
  }

  let unseen = 0;
  function updateUnseenCount() {
    unseen += 1;
    $('unseen-count').textContent = String(unseen);
  }
  $('notifications').onclick = () => { unseen = 0; $('unseen-count').textContent = '0'; };

  function logEvent(name, text) {
    const list = $('events');
    list.prepend(el('li', {},
      el('time', { textContent: clock() }), ' ',
      el('code', { textContent: name }), text ? ` ${text}` : ''));
    while (list.children.length > 40) list.lastChild.remove();
  }

  function setConnection(state, text) {
    const pill = $('connection');
    pill.className = `pill pill-${state}`;
    pill.dataset.state = state;
    pill.textContent = text;
  }

  // ------------------------------------------------------------------ the list (ProspectsPage)

  let prospects = [];
  let fetchGeneration = 0;
  let buffered = null;     // events received while a refetch is in flight

  function reduce(kind, p) {
    if (kind === 'created') {
      // the contract's "Éviter les doublons": a prospect already listed is not added twice
      prospects = prospects.some((x) => x.id === p.id)
        ? prospects.map((x) => (x.id === p.id ? p : x))
        : [p, ...prospects];
    } else if (kind === 'updated') {
      prospects = prospects.map((x) => (x.id === p.id ? p : x));
    } else {
      prospects = prospects.filter((x) => x.id !== p.id);
    }
  }

  function apply(kind, p) {
    if (buffered) {
      buffered.push([kind, p]);
    } else {
      reduce(kind, p);
      render();
    }
  }

  async function refetchProspects(why) {
    const generation = ++fetchGeneration;
    buffered = [];
    try {
      const data = await api('GET', 'api/prospects');
      if (generation !== fetchGeneration) return;
      prospects = data.prospects;
      // events that arrived meanwhile are newer than or equal to what was read: replay them
      for (const [kind, p] of buffered) reduce(kind, p);
      $('sync').textContent = `Liste rechargée à ${clock()} (${why}).`;
    } catch (error) {
      if (generation === fetchGeneration) $('sync').textContent = `Rechargement impossible : ${error.message}`;
    } finally {
      if (generation === fetchGeneration) {
        buffered = null;
        render();
      }
    }
  }

  let onScreen = null;     // ids rendered last time: only newcomers are highlighted

  function render() {
    const before = onScreen;
    onScreen = new Set(prospects.map((p) => p.id));
    $('prospects').replaceChildren(...prospects.map((p) => row(p, before !== null && !before.has(p.id))));
    $('prospect-count').textContent = String(prospects.length);
    $('empty').hidden = prospects.length > 0;
  }

  function row(p, fresh) {
    const actions = el('td', { className: 'row-actions' },
      el('button', { type: 'button', className: 'edit', textContent: 'Modifier', onclick: () => startEdit(p) }),
      el('button', { type: 'button', className: 'delete danger', textContent: 'Supprimer',
                     onclick: () => remove(p) }));
    if (session && session.calendly && p.email) {
      actions.append(el('button', { type: 'button', className: 'book', textContent: 'RDV Calendly',
                                    onclick: () => book({ first_name: p.firstname || '', last_name: p.lastname || '',
                                                          email: p.email, phone: p.phone || '' }) }));
    }
    const tr = el('tr', { className: fresh ? 'prospect fresh' : 'prospect', id: `prospect-${p.id}` },
      el('td', { className: 'name' }, el('strong', { textContent: fullName(p) }),
        el('small', { textContent: `créé le ${new Date(p.created_at).toLocaleString('fr-FR')}` })),
      el('td', { className: 'contact' }, el('span', { textContent: p.email || '' }),
        el('small', { textContent: p.phone || '' })),
      el('td', {}, el('span', { className: `status status-${p.status}`, textContent: p.status || '' })),
      el('td', { className: 'source', textContent: p.source || '' }),
      el('td', {}, el('div', { className: 'notes', textContent: p.notes || '' })),
      actions);
    tr.dataset.id = p.id;
    return tr;
  }

  function showProspect(id) {
    const tr = document.getElementById(`prospect-${id}`);
    if (!tr) return;
    tr.scrollIntoView({ block: 'center' });
    tr.classList.add('flash');
    setTimeout(() => tr.classList.remove('flash'), 1500);
  }

  // ------------------------------------------------------------------ forms

  const form = $('prospect-form');
  let editing = null;

  function startEdit(p) {
    editing = p.id;
    for (const name of ['firstname', 'lastname', 'email', 'phone', 'status', 'source', 'notes']) {
      form.elements[name].value = p[name] || '';
    }
    $('form-title').textContent = `Modifier ${fullName(p)}`;
    $('save').textContent = 'Enregistrer';
    $('cancel-edit').hidden = false;
    $('form-message').textContent = '';
    form.elements.firstname.focus();
  }

  function stopEdit() {
    editing = null;
    form.reset();
    $('form-title').textContent = 'Nouveau prospect';
    $('save').textContent = 'Créer';
    $('cancel-edit').hidden = true;
  }
  $('cancel-edit').onclick = stopEdit;

  form.onsubmit = async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form));
    const message = $('form-message');
    try {
      if (editing) {
        await api('PATCH', `api/prospects/${editing}`, values);
        message.textContent = 'Modification enregistrée.';
      } else {
        await api('POST', 'api/prospects', values);
        message.textContent = 'Prospect enregistré.';
      }
      message.className = 'message ok';
      stopEdit();
    } catch (error) {
      message.textContent = `Erreur : ${error.message}`;
      message.className = 'message error';
    }
  };

  async function remove(p) {
    try {
      await api('DELETE', `api/prospects/${p.id}`);
      if (editing === p.id) stopEdit();
    } catch (error) {
      $('form-message').textContent = `Erreur : ${error.message}`;
      $('form-message').className = 'message error';
    }
  }

  const FIRST = ['Manon', 'Inès', 'Chloé', 'Jade', 'Louise', 'Emma', 'Sarah', 'Lina', 'Zoé', 'Anaïs'];
  const LAST = ['Lefèvre', 'Garnier', 'Rousseau', 'Faure', 'Mercier', 'Blanc', 'Guérin', 'Chevalier'];
  const pick = (list) => list[Math.floor(Math.random() * list.length)];
  const ascii = (text) => text.normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase();

  const calendlyForm = $('calendly-form');
  function suggestInvitee() {
    const first = pick(FIRST);
    const last = pick(LAST);
    calendlyForm.elements.first_name.value = first;
    calendlyForm.elements.last_name.value = last;
    calendlyForm.elements.email.value = `${ascii(first)}.${ascii(last)}.${Math.floor(Math.random() * 900 + 100)}@example.com`;
    calendlyForm.elements.phone.value = `+33 6 ${Math.floor(Math.random() * 90 + 10)} 12 34 56`;
  }

  async function book(invitee) {
    const message = $('calendly-message');
    message.textContent = 'Envoi du webhook…';
    message.className = 'message';
    try {
      const data = await api('POST', 'api/calendly/bookings', invitee);
      message.textContent = `Webhook Calendly : ${data.webhook.status} ${data.webhook.body && data.webhook.body.status}`;
      message.className = 'message ok';
      return true;
    } catch (error) {
      message.textContent = `Erreur : ${error.message}`;
      message.className = 'message error';
      return false;
    }
  }

  calendlyForm.onsubmit = async (event) => {
    event.preventDefault();
    if (await book(Object.fromEntries(new FormData(calendlyForm)))) suggestInvitee();
  };

  // ------------------------------------------------------------------ socket (src/lib/socket.ts)

  let socket = null;
  let refusals = 0;
  let renewing = false;

  // A fresh token, then socket.connect(); retried with backoff while the demo is away.
  async function reconnectWithFreshToken(delay) {
    if (renewing) return;
    renewing = true;
    try {
      for (;;) {
        if (delay) await new Promise((resolve) => setTimeout(resolve, delay));
        try {
          await fetchSession();
          break;
        } catch (error) {
          delay = Math.min((delay || 500) * 2, 10000);
          setConnection('down', `Déconnecté — nouvel essai dans ${Math.round(delay / 1000)} s`);
        }
      }
      logEvent('token', 'nouveau jeton obtenu');   // the auth function hands it out
      socket.connect();
    } finally {
      renewing = false;
    }
  }

  function connectSocket() {
    if (socket && socket.connected) return socket;
    socket = io(location.origin, {
      auth: (cb) => cb({ token: session.token }),      // read on every (re)connection
      transports: ['websocket', 'polling'],
    });

    socket.on('connect', () => {
      console.log('🟢 Socket.IO connecté:', socket.id);
      refusals = 0;
      setConnection('connected', 'Connecté');
      logEvent('connect', socket.recovered ? '(session récupérée)' : '');
      // the contract: refetch after every (re)connection
      window.dispatchEvent(new CustomEvent('socket-reconnected'));
    });

    socket.on('disconnect', (reason) => {
      console.log('🔴 Socket.IO déconnecté:', reason);
      setConnection('down', `Déconnecté — ${reason}`);
      logEvent('disconnect', reason);
      if (reason === 'io server disconnect') {
        // the server closed the session (expired token): reconnect by hand, with a new token
        reconnectWithFreshToken(0);
      }
      // for any other reason socket.io-client reconnects by itself
    });

    socket.on('connect_error', (error) => {
      console.error('❌ Erreur Socket.IO:', error.message);
      if (socket.active) return;     // a transport failure: socket.io-client retries by itself
      const reason = error.data && error.data.reason ? ` (${error.data.reason})` : '';
      setConnection('refused', `Refusé — ${error.message}${reason}`);
      logEvent('connect_error', `${error.message}${reason}`);
      refusals += 1;
      reconnectWithFreshToken(Math.min(1000 * 2 ** (refusals - 1), 30000));
    });

    socket.on('prospect:created', (newProspect) => {
      console.log('🟢 Nouveau prospect:', newProspect);
      logEvent('prospect:created', fullName(newProspect));
      apply('created', newProspect);
      showToast({ title: 'Nouveau prospect', message: `${fullName(newProspect)} a été ajouté`, type: 'success' });
    });

    socket.on('prospect:updated', (updatedProspect) => {
      console.log('🔄 Prospect mis à jour:', updatedProspect);
      logEvent('prospect:updated', fullName(updatedProspect));
      apply('updated', updatedProspect);
      if (updatedProspect.source === 'calendly') {
        showToast({ title: 'Nouveau rendez-vous',
                    message: `${fullName(updatedProspect)} a pris un nouveau rendez-vous`, type: 'info' });
      }
    });

    socket.on('prospect:deleted', ({ id }) => {
      console.log('🔴 Prospect supprimé:', id);
      const gone = prospects.find((p) => p.id === id);
      logEvent('prospect:deleted', gone ? fullName(gone) : id);
      apply('deleted', { id });
    });

    socket.on('notification', (notification) => {
      console.log('📢 Nouvelle notification:', notification);
      logEvent('notification', notification.title || notification.type);
      if (notification.type === 'calendly_prospect_created') {
        showToast({
          title: notification.title, message: notification.message, type: 'info', duration: 5000,
          action: { label: 'Voir le prospect', onClick: () => showProspect(notification.meta.prospect_id) },
        });
      }
      updateUnseenCount();
    });

    return socket;
  }

  window.addEventListener('socket-reconnected', () => refetchProspects('après connexion'));

  // ------------------------------------------------------------------ start

  function fatal(text) {
    $('fatal').textContent = text;
    $('fatal').hidden = false;
  }

  async function start() {
    for (const id of ['1', '2', '3']) {
      const link = el('a', { href: `?user=${id}`, textContent: `utilisateur ${id}` });
      if (id === userId) link.className = 'current';
      $('users').append(link);
    }
    if (typeof io !== 'function') {
      setConnection('refused', 'Client socket.io absent');
      fatal('Le client officiel socket.io-client est introuvable (vendor/socket.io.min.js). '
            + 'Installez-le avec « crm-realtime client-bundle install » '
            + '(ou, dans le dépôt, « npm ci --prefix tests/js »), '
            + 'puis redémarrez la démo et rechargez la page.');
      return;
    }
    try {
      await fetchSession();
    } catch (error) {
      setConnection('refused', 'Pas de session');
      fatal(`Impossible d’obtenir un jeton pour l’utilisateur ${userId} : ${error.message}`);
      return;
    }
    $('identity').textContent = `${session.user.email} · ${session.organization.name} `
      + `(organisation ${session.organization.id})`;
    document.title = `Prospects — ${session.user.email}`;
    if (session.calendly) {
      suggestInvitee();
    } else {
      for (const input of calendlyForm.elements) input.disabled = true;
      $('calendly-message').textContent = 'Pas de connexion Calendly pour cette organisation '
        + '(dans la démo, seule l’organisation 1 en a une).';
    }
    refetchProspects('chargement');
    connectSocket();
  }

  start();
}());
