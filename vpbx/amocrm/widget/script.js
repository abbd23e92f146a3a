/*
 * vpbx widget for amoCRM (amocrm.md §3): settings (F5–F12), click-to-call (§3.5), pop-ups (§3.6).
 * An AMD module for amoCRM's widget host; plain ES2017 and the host's jQuery, no framework.
 * BACKEND is our origin, baked in by `vpbx amocrm widget-build --backend URL`.
 */
define(['jquery'], function ($) {
  'use strict';

  var BACKEND = __VPBX_BACKEND__;
  var WIDGET_NAME = __VPBX_NAME__;
  var API = BACKEND.replace(/\/+$/, '') + '/amo/widget/v1';
  var DIRECTIONS = ['incoming', 'outgoing', 'missed', 'failed_outgoing'];
  var KINDS = ['new', 'existing'];

  function esc(value) {
    return String(value === null || value === undefined ? '' : value)
      .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
      .replace(/"/g, '&quot;').replace(/'/g, '&#39;');
  }

  function uuid4() {
    if (window.crypto && typeof window.crypto.randomUUID === 'function') {
      return window.crypto.randomUUID();
    }
    var b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join('');
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  }

  function getPath(obj, path) {
    return path.split('.').reduce(function (o, k) { return o === null || o === undefined ? undefined : o[k]; }, obj);
  }

  function setPath(obj, path, value) {
    var keys = path.split('.');
    var last = keys.pop();
    var node = keys.reduce(function (o, k) {
      if (o[k] === null || typeof o[k] !== 'object') { o[k] = {}; }
      return o[k];
    }, obj);
    node[last] = value;
  }

  function prettyLine(line) {
    var d = String(line).replace(/^\+/, '');
    if (/^7\d{10}$/.test(d)) {
      return '+7 ' + d.slice(1, 4) + ' ' + d.slice(4, 7) + '-' + d.slice(7, 9) + '-' + d.slice(9, 11);
    }
    return line;
  }

  return function () {
    var self = this;
    var ui = { state: null, directory: null, meta: null, mapping: null, scenarios: [], tab: 'main', $root: null };

    function t(key) {
      var strings = (typeof self.i18n === 'function' && self.i18n('vpbx')) || {};
      return strings[key] || key;
    }

    // --- the backend --------------------------------------------------------------------------------------
    function api(method, path, body, headers) {
      return new Promise(function (resolve, reject) {
        var opts = {
          url: API + path,
          type: method,
          method: method,
          dataType: 'json',
          headers: headers || {}
        };
        if (body !== undefined) {
          opts.data = JSON.stringify(body);
          opts.contentType = 'application/json';
        }
        self.$authorizedAjax(opts)
          .done(function (data) { resolve(data); })
          .fail(function (xhr) {
            var answer = (xhr && xhr.responseJSON) || {};
            reject({ status: xhr ? xhr.status : 0, error: answer.error || 'network', body: answer });
          });
      });
    }

    function errorText(e) {
      if (e && e.body && e.body.message) { return e.body.message; }
      if (e && e.status === 0) { return t('status_pbx_unreachable'); }
      return t('error_prefix') + ' ' + ((e && e.error) || '');
    }

    function notify(text) {
      var note = { header: WIDGET_NAME, text: text };
      if (window.APP && APP.notifications && typeof APP.notifications.show_message === 'function') {
        APP.notifications.show_message(note);
      }
    }

    // --- §3.5 click-to-call -----------------------------------------------------------------------------
    function clickToCall(data) {
      var phone = data && (data.value || data.phone);
      if (!phone) { return; }
      var body = { phone: String(phone) };
      var card = window.APP && APP.data && APP.data.current_card;
      if (card && card.id && card.type) {
        body.entity = { type: String(card.type), id: Number(card.id) };
      }
      notify(t('calling'));
      api('POST', '/call', body, { 'Idempotency-Key': uuid4() }).catch(function (e) {
        notify(errorText(e));
      });
    }

    // --- §3.6 pop-ups: ticket → EventSource, reconnect 1 → 30 s ----------------------------------------------
    var popup = { source: null, timer: null, backoff: 1000, stopped: false };

    function drawPopup(m) {
      $('.vpbx-popup').remove();
      var title = m.contact ? m.contact.name : t('popup_new_client');
      var links = '';
      if (m.contact) {
        links += '<a data-role="popup-contact" target="_top" href="' + esc(m.contact.url) + '">' +
          esc(t('popup_contact')) + ': ' + esc(m.contact.name) + '</a>';
      }
      if (m.lead) {
        links += '<a data-role="popup-lead" target="_top" href="' + esc(m.lead.url) + '">' +
          esc(t('popup_lead')) + ': ' + esc(m.lead.name) + '</a>';
      }
      var $card = $(
        '<div class="vpbx-popup" data-role="popup" data-session="' + esc(m.session_id) + '" ' +
        'style="position:fixed;right:16px;bottom:16px;z-index:10000;background:#fff;border:1px solid #ccc;' +
        'padding:12px;max-width:320px;box-shadow:0 2px 8px rgba(0,0,0,.2)">' +
        '<p data-role="popup-direction">' + esc(t(m.direction === 'outgoing' ? 'popup_outgoing' : 'popup_incoming')) + '</p>' +
        '<p data-role="popup-title"><b>' + esc(title) + '</b> ' + esc(m.client_phone) + '</p>' +
        '<p data-role="popup-line">' + (m.line ? esc(t('popup_line')) + ': ' + esc(prettyLine(m.line)) + ', ' : '') +
        esc(t('popup_extension')) + ': ' + esc(m.extension) + '</p>' +
        '<p style="display:flex;flex-direction:column">' + links + '</p>' +
        '<button type="button" data-role="popup-close">' + esc(t('popup_close')) + '</button></div>'
      );
      $card.on('click', '[data-role="popup-close"]', function () { $card.remove(); });
      $('body').append($card);
    }

    function onCall(m) {
      drawPopup(m);
      if (window.APP && APP.notifications && typeof APP.notifications.add_call === 'function') {
        var user = (typeof APP.constant === 'function' && APP.constant('user')) || {};
        var note = {
          text: (m.contact ? m.contact.name : t('popup_new_client')) + ' ' + m.client_phone,
          date: m.at,
          from: m.direction === 'outgoing' ? (user.name || m.extension) : m.client_phone,
          to: m.direction === 'outgoing' ? m.client_phone : (user.name || m.extension)
        };
        if (m.contact) { note.element = { id: m.contact.id, type: 'contact' }; }
        APP.notifications.add_call(note);
      }
    }

    function reconnectLater() {
      if (popup.stopped || popup.timer) { return; }
      var wait = popup.backoff;
      popup.backoff = Math.min(popup.backoff * 2, 30000);
      popup.timer = setTimeout(function () { popup.timer = null; openStream(); }, wait);
    }

    function openStream() {
      if (popup.stopped || popup.source || typeof window.EventSource !== 'function') { return; }
      api('POST', '/stream-ticket').then(function (answer) {
        if (popup.stopped) { return; }
        var source = popup.source = new EventSource(API + '/stream?ticket=' + encodeURIComponent(answer.ticket));
        source.addEventListener('hello', function () {
          popup.backoff = 1000;
          $('body').attr('data-vpbx-stream', 'open');  // observable: pop-ups reach this tab
        });
        source.addEventListener('call', function (e) {
          try { onCall(JSON.parse(e.data)); } catch (err) { /* a malformed message is skipped */ }
        });
        source.onerror = function () {
          source.close();
          $('body').attr('data-vpbx-stream', 'closed');
          if (popup.source === source) { popup.source = null; }
          reconnectLater();
        };
      }).catch(function () { reconnectLater(); });
    }

    function closeStream() {
      popup.stopped = true;
      if (popup.timer) { clearTimeout(popup.timer); popup.timer = null; }
      if (popup.source) { popup.source.close(); popup.source = null; }
    }

    // --- rendering helpers ------------------------------------------------------------------------------
    function readOnly() { return !(ui.state && ui.state.is_admin); }

    function statusText(state) {
      if (!state) { return t('status_pbx_unreachable'); }
      if (state.oauth_missing && state.status !== 'active') { return t('status_oauth_missing'); }
      if (state.status === 'needs_reauth') { return t('status_needs_reauth'); }
      if (state.status !== 'active') { return t('status_off'); }
      if (state.health === 'amo_unreachable') { return t('status_amo_unreachable'); }
      if (state.health === 'pbx_unreachable') { return t('status_pbx_unreachable'); }
      return t('status_on');
    }

    function button(action, label, extra) {
      return '<button type="button" class="vpbx-button button-input" data-action="' + action + '"' +
        (extra || '') + '>' + esc(label) + '</button>';
    }

    function userName(id) {
      var users = (ui.directory && ui.directory.amo_users) || [];
      for (var i = 0; i < users.length; i++) { if (users[i].id === id) { return users[i].name; } }
      return String(id);
    }

    function mappedUsers() {
      return ((ui.mapping && ui.mapping.items) || []).map(function (i) { return i.amo_user_id; });
    }

    function message(where, text, isError) {
      ui.$root.find('[data-message="' + where + '"]')
        .text(text || '').toggleClass('vpbx-error', !!isError);
    }

    // --- the state before enabling ------------------------------------------------------------------------
    function renderOff() {
      var html = '<div class="vpbx-off">' +
        '<p class="vpbx-status" data-role="status">' + esc(statusText(ui.state)) + '</p>';
      if (ui.state && !ui.state.oauth_missing) {  // without the OAuth install «Подключить» cannot link
        html += button('connect', t('connect')) + ' ' + button('create', t('create'));
      }
      html += '<p data-message="off"></p></div>';
      ui.$root.html(html);
    }

    // --- «Основные настройки» -----------------------------------------------------------------------------
    function renderMain() {
      var st = ui.state;
      var html = '<section class="vpbx-main">' +
        '<h3>' + esc(t('main_title')) + '</h3>' +
        '<p>' + esc(t('domain')) + ': <b data-role="domain">' + esc(st.pbx_domain || '') + '</b></p>' +
        '<p>' + esc(t('status')) + ': <span class="vpbx-status" data-role="status">' + esc(statusText(st)) +
        '</span></p>';
      if (!readOnly()) { html += button('disconnect', t('disconnect')); }
      html += '<h4>' + esc(t('scenarios_title')) + '</h4><ul class="vpbx-scenarios">';
      ui.scenarios.forEach(function (sc) {
        html += '<li data-scenario="' + sc.id + '">' +
          '<input type="text" maxlength="64" data-field="name" value="' + esc(sc.name) + '">' +
          ' <label><input type="checkbox" data-field="is_active"' + (sc.is_active ? ' checked' : '') + '> ' +
          esc(t('active')) + '</label>' +
          ' <button type="button" data-action="copy-scenario" title="' + esc(t('copy')) + '">⧉</button>' +
          ' <button type="button" data-action="delete-scenario" title="' + esc(t('delete')) + '">🗑</button>' +
          '</li>';
      });
      html += '</ul>';
      if (!readOnly()) { html += button('add-scenario', '+', ' title="' + esc(t('add_scenario')) + '"'); }
      html += '<p data-message="scenarios"></p>';
      html += renderMapping();
      html += '</section>';
      return html;
    }

    function renderMapping() {
      var dir = ui.directory || { amo_users: [], extensions: [] };
      var chosen = {};
      ((ui.mapping && ui.mapping.items) || []).forEach(function (i) { chosen[i.amo_user_id] = i.extension; });
      var html = '<h4>' + esc(t('mapping_title')) + '</h4>' +
        '<p class="vpbx-hint">' + esc(t('mapping_unique')) + '</p><table class="vpbx-mapping">';
      dir.amo_users.forEach(function (u) {
        html += '<tr data-user="' + u.id + '"' + (u.is_active ? '' : ' class="vpbx-inactive"') + '><td>' +
          esc(u.name) + '</td><td><select data-field="extension"><option value="">' + esc(t('not_selected')) +
          '</option>';
        dir.extensions.forEach(function (e) {
          html += '<option value="' + esc(e.pin) + '"' + (chosen[u.id] === e.pin ? ' selected' : '') + '>' +
            esc(e.pin + ' — ' + e.name) + '</option>';
        });
        html += '</select></td></tr>';
      });
      html += '</table><p>' + esc(t('fallback')) + ': <select data-field="fallback"><option value="">' +
        esc(t('not_selected')) + '</option>';
      dir.amo_users.forEach(function (u) {
        var fb = ui.mapping && ui.mapping.fallback_user_id === u.id;
        html += '<option value="' + u.id + '"' + (fb ? ' selected' : '') + '>' + esc(u.name) + '</option>';
      });
      html += '</select></p>';
      if (!readOnly()) { html += button('save-mapping', t('save_mapping')); }
      html += '<p data-message="mapping"></p>';
      return html;
    }

    function collectMapping() {
      var items = [];
      ui.$root.find('table.vpbx-mapping tr[data-user]').each(function () {
        var ext = $(this).find('select[data-field="extension"]').val();
        if (ext) { items.push({ amo_user_id: Number($(this).attr('data-user')), extension: String(ext) }); }
      });
      var fb = ui.$root.find('select[data-field="fallback"]').val();
      return { items: items, fallback_user_id: fb ? Number(fb) : null };
    }

    function mappingProblem(body) {
      var seen = {};
      for (var i = 0; i < body.items.length; i++) {
        var ext = body.items[i].extension;
        if (seen[ext]) { return t('extension_repeats').replace('{ext}', ext); }
        seen[ext] = true;
      }
      if (body.items.length && body.fallback_user_id === null) { return t('fallback_required'); }
      return '';
    }

    // --- a scenario's tab (F8–F12) ------------------------------------------------------------------------
    function responsibleSelect(path, value) {
      var v = value || { rule: 'answered' };
      var current = v.rule === 'user' ? 'user:' + v.user_id : v.rule === 'group' ? 'group:' + v.group_id : v.rule;
      var options = [['answered', t('rule_answered')], ['contact', t('rule_contact')],
        ['fallback', t('rule_fallback')]];
      ((ui.directory && ui.directory.amo_users) || []).forEach(function (u) { options.push(['user:' + u.id, u.name]); });
      ((ui.directory && ui.directory.groups) || []).forEach(function (g) {
        options.push(['group:' + g.id, t('group') + ': ' + g.name]);
      });
      return '<label>' + esc(t('responsible')) + ' <select data-path="' + path + '" data-kind="responsible">' +
        options.map(function (o) {
          return '<option value="' + esc(o[0]) + '"' + (o[0] === current ? ' selected' : '') + '>' + esc(o[1]) +
            '</option>';
        }).join('') + '</select></label>';
    }

    function checkbox(path, value, label) {
      return '<label><input type="checkbox" data-path="' + path + '" data-kind="bool"' + (value ? ' checked' : '') +
        '> ' + esc(label) + '</label>';
    }

    function text(path, value, label) {
      return '<label>' + esc(label) + ' <input type="text" maxlength="255" data-path="' + path +
        '" data-kind="text" value="' + esc(value) + '"></label>';
    }

    function tags(path, value, label) {
      return '<label>' + esc(label) + ' <input type="text" data-path="' + path + '" data-kind="tags" value="' +
        esc((value || []).join(', ')) + '"></label>';
    }

    // «Дополнительные поля» (F11): rows of (field, value) from /amo-meta's contact_fields / lead_fields
    function metaFields(entity) {
      var all = (ui.meta && ui.meta[entity === 'contacts' ? 'contact_fields' : 'lead_fields']) || [];
      // phones and e-mails (multitext) are not offered: the phone is the call's own, an e-mail is not known
      return all.filter(function (f) { return f.type !== 'multitext'; });
    }

    function metaField(entity, id) {
      var all = metaFields(entity);
      for (var i = 0; i < all.length; i++) { if (all[i].id === id) { return all[i]; } }
      return null;
    }

    function fieldLabel(f) { return f.name || f.code || ('#' + f.id); }

    function fieldRow(entity, value) {
      var known = metaFields(entity);
      var f = metaField(entity, value.field_id);
      var html = '<div class="vpbx-field-row" data-role="field-row">' +
        '<select data-role="field-id" aria-label="' + esc(t('field')) + '">';
      if (!f) {
        html += '<option value="' + esc(value.field_id) + '" selected>' +
          esc(t('field_unknown').replace('{id}', value.field_id)) + '</option>';
      }
      known.forEach(function (k) {
        html += '<option value="' + k.id + '"' + (f && k.id === f.id ? ' selected' : '') + '>' + esc(fieldLabel(k)) +
          '</option>';
      });
      html += '</select> ';
      if (f && f.enums && f.enums.length) {
        html += '<select data-role="field-enum" aria-label="' + esc(t('field_value')) + '">';
        f.enums.forEach(function (e) {
          html += '<option value="' + e.id + '"' + (e.id === value.enum_id ? ' selected' : '') + '>' + esc(e.value) +
            '</option>';
        });
        html += '</select>';
      } else {
        var numeric = f && f.type === 'numeric';
        var shown = value.value === null || value.value === undefined ? '' : value.value;
        html += '<input type="' + (numeric ? 'number' : 'text') + '" maxlength="255" data-role="field-value"' +
          ' aria-label="' + esc(t('field_value')) + '" placeholder="' + esc(numeric ? '' : t('field_template_hint')) +
          '" value="' + esc(shown) + '">';
      }
      if (!readOnly()) {
        html += ' <button type="button" data-action="remove-field" title="' + esc(t('remove')) + '">×</button>';
      }
      return html + '</div>';
    }

    function fieldsEditor(path, entity, values) {
      var html = '<fieldset class="vpbx-fields" data-fields="' + path + '" data-entity="' + entity + '">' +
        '<legend>' + esc(t('fields')) + '</legend>';
      (values || []).forEach(function (v) { html += fieldRow(entity, v); });
      if (!readOnly()) {
        html += metaFields(entity).length ?
          button('add-field', t('add_field')) : '<p class="vpbx-hint">' + esc(t('no_fields')) + '</p>';
      }
      return html + '</fieldset>';
    }

    function readFields($box) {
      var entity = $box.attr('data-entity');
      var out = [];
      $box.find('[data-role="field-row"]').each(function () {
        var $row = $(this);
        var id = Number($row.find('[data-role="field-id"]').val());
        if (!id) { return; }
        var f = metaField(entity, id);
        if (f && f.enums && f.enums.length) {
          var $enum = $row.find('[data-role="field-enum"]');
          out.push({ field_id: id, enum_id: Number($enum.length ? $enum.val() : f.enums[0].id) });
        } else {
          var $input = $row.find('[data-role="field-value"]');
          var raw = $input.length ? String($input.val()) : '';
          var value = f && f.type === 'numeric' && raw.trim() !== '' && !isNaN(Number(raw)) ? Number(raw) : raw;
          out.push({ field_id: id, value: value });
        }
      });
      return out;
    }

    function fieldsProblem() {
      var problem = '';
      ui.$root.find('section.vpbx-scenario [data-fields]').each(function () {
        var $box = $(this);
        readFields($box).forEach(function (v) {
          if (!problem && v.enum_id === undefined && String(v.value).trim() === '') {
            var f = metaField($box.attr('data-entity'), v.field_id);
            problem = t('field_value_required').replace('{name}', f ? fieldLabel(f) : '#' + v.field_id);
          }
        });
      });
      return problem;
    }

    function pipelineStatus(base, lead) {
      var pipelines = (ui.meta && ui.meta.pipelines) || [];
      var current = lead.pipeline_id ? lead.pipeline_id + ':' + (lead.status_id || '') : '';
      var html = '<label>' + esc(t('lead_status')) + ' <select data-path="' + base + '" data-kind="pipeline-status">' +
        '<option value="">' + esc(t('main_pipeline')) + '</option>';
      pipelines.filter(function (p) { return !p.is_archive; }).forEach(function (p) {
        p.statuses.filter(function (s) { return s.id !== 142 && s.id !== 143 && s.type !== 1; }).forEach(function (s) {
          var v = p.id + ':' + s.id;
          html += '<option value="' + v + '"' + (v === current ? ' selected' : '') + '>' + esc(p.name + ' → ' + s.name) +
            '</option>';
        });
      });
      return html + '</select></label>';
    }

    function taskBlock(base, task) {
      var dl = task.deadline || { kind: 'minutes', minutes: 60 };
      var types = (ui.meta && ui.meta.task_types) || [];
      var html = '<details class="vpbx-block" open><summary>' + checkbox(base + '.enabled', task.enabled, t('task')) +
        '</summary>' + text(base + '.text', task.text, t('task_text')) + responsibleSelect(base + '.responsible', task.responsible) +
        '<label>' + esc(t('deadline')) + ' <select data-path="' + base + '.deadline.kind" data-kind="text">' +
        '<option value="minutes"' + (dl.kind === 'minutes' ? ' selected' : '') + '>' + esc(t('deadline_minutes')) + '</option>' +
        '<option value="end_of_day"' + (dl.kind === 'end_of_day' ? ' selected' : '') + '>' + esc(t('deadline_eod')) +
        '</option></select></label> <input type="number" min="1" data-path="' + base + '.deadline.minutes" data-kind="int" value="' +
        esc(dl.minutes || 60) + '">';
      if (types.length) {
        html += '<label>' + esc(t('task_type')) + ' <select data-path="' + base + '.task_type_id" data-kind="int">' +
          types.map(function (tt) {
            return '<option value="' + tt.id + '"' + (tt.id === task.task_type_id ? ' selected' : '') + '>' + esc(tt.name) + '</option>';
          }).join('') + '</select></label>';
      }
      return html + '</details>';
    }

    function leadBlock(base, lead, existing) {
      var html = '<details class="vpbx-block" open><summary>' + checkbox(base + '.enabled', lead.enabled, t('lead')) +
        '</summary>' + text(base + '.name_template', lead.name_template, t('lead_name')) + pipelineStatus(base, lead) +
        tags(base + '.tags', lead.tags, t('tags')) + fieldsEditor(base + '.fields', 'leads', lead.fields) +
        responsibleSelect(base + '.responsible', lead.responsible) +
        '<label>' + esc(t('lead_target')) + ' <select data-path="' + base + '.target" data-kind="text">' +
        '<option value="deal"' + (lead.target !== 'unsorted' ? ' selected' : '') + '>' + esc(t('target_deal')) + '</option>' +
        '<option value="unsorted"' + (lead.target === 'unsorted' ? ' selected' : '') + '>' + esc(t('target_unsorted')) +
        '</option></select></label>';
      if (existing) { html += checkbox(base + '.skip_if_active_lead', lead.skip_if_active_lead, t('skip_if_active')); }
      return html + '</details>';
    }

    function contactBlock(base, contact) {
      return '<details class="vpbx-block" open><summary>' + checkbox(base + '.enabled', contact.enabled, t('contact')) +
        '</summary>' + text(base + '.name_template', contact.name_template, t('name_template')) +
        tags(base + '.tags', contact.tags, t('tags')) + fieldsEditor(base + '.fields', 'contacts', contact.fields) +
        responsibleSelect(base + '.responsible', contact.responsible) + '</details>';
    }

    function renderScenario(sc) {
      var all = (ui.directory && ui.directory.lines) || [];
      var html = '<section class="vpbx-scenario" data-scenario="' + sc.id + '"><h3>' + esc(sc.name) + '</h3>' +
        '<h4>' + esc(t('lines_title')) + '</h4><ul class="vpbx-lines">';
      sc.lines.forEach(function (line) {
        html += '<li data-line="' + esc(line) + '">' + esc(prettyLine(line)) +
          ' <button type="button" data-action="remove-line" title="' + esc(t('remove')) + '">×</button></li>';
      });
      html += '</ul><select data-field="new-line"><option value=""></option>';
      all.filter(function (l) { return sc.lines.indexOf(l) < 0; }).forEach(function (l) {
        html += '<option value="' + esc(l) + '">' + esc(prettyLine(l)) + '</option>';
      });
      html += '</select> <button type="button" data-action="add-line" title="' + esc(t('add')) + '">+</button>';
      var sr = sc.smart_routing || { enabled: false, excluded_user_ids: [] };
      html += '<h4>' + checkbox('smart_routing.enabled', sr.enabled, t('smart_routing')) + '</h4>' +
        '<p>' + esc(t('exclusions')) + ': <span class="vpbx-exclusions">';
      sr.excluded_user_ids.forEach(function (id) {
        html += '<span data-excluded="' + id + '">' + esc(userName(id)) +
          ' <button type="button" data-action="remove-exclusion">×</button></span> ';
      });
      html += '</span><select data-field="new-exclusion"><option value=""></option>';
      mappedUsers().filter(function (id) { return sr.excluded_user_ids.indexOf(id) < 0; }).forEach(function (id) {
        html += '<option value="' + id + '">' + esc(userName(id)) + '</option>';
      });
      html += '</select> <button type="button" data-action="add-exclusion">+</button></p>';
      html += '<nav class="vpbx-event-tabs">';
      DIRECTIONS.forEach(function (d) {
        html += '<button type="button" data-action="event-tab" data-direction="' + d + '"' +
          (d === ui.direction ? ' class="vpbx-current"' : '') + '>' + esc(t('events_' + d)) + '</button>';
      });
      html += '</nav><nav class="vpbx-kind-tabs">';
      KINDS.forEach(function (k) {
        html += '<button type="button" data-action="kind-tab" data-kind-tab="' + k + '"' +
          (k === ui.kind ? ' class="vpbx-current"' : '') + '>' + esc(t('client_' + k)) + '</button>';
      });
      html += '</nav>';
      DIRECTIONS.forEach(function (d) {
        KINDS.forEach(function (k) {
          var base = 'events.' + d + '.' + k;
          var c = getPath(sc, base) || {};
          var shown = d === ui.direction && k === ui.kind;
          html += '<div class="vpbx-event" data-event="' + d + '.' + k + '"' + (shown ? '' : ' hidden') + '>' +
            checkbox(base + '.enabled', c.enabled, t('on'));
          if (k === 'new') {
            html += checkbox(base + '.update_responsible_on_transfer', c.update_responsible_on_transfer !== false,
              t('update_on_transfer'));
            html += contactBlock(base + '.contact', c.contact || {});
          }
          html += taskBlock(base + '.task', c.task || {}) + leadBlock(base + '.lead', c.lead || {}, k === 'existing');
          html += '</div>';
        });
      });
      if (!readOnly()) { html += button('save-scenario', t('save_settings')); }
      html += '<p data-message="scenario"></p></section>';
      return html;
    }

    function collectScenario(sc) {
      var doc = JSON.parse(JSON.stringify(sc));
      var $section = ui.$root.find('section.vpbx-scenario');
      $section.find('[data-path]').each(function () {
        var $el = $(this);
        var path = $el.attr('data-path');
        var kind = $el.attr('data-kind');
        var v = $el.val();
        if (kind === 'bool') {
          setPath(doc, path, $el.prop('checked'));
        } else if (kind === 'int') {
          if (v !== '' && v !== null) { setPath(doc, path, Number(v)); }
        } else if (kind === 'tags') {
          setPath(doc, path, String(v).split(',').map(function (x) { return x.trim(); }).filter(Boolean));
        } else if (kind === 'responsible') {
          var parts = String(v).split(':');
          var r = { rule: parts[0] };
          if (parts[0] === 'user') { r.user_id = Number(parts[1]); }
          if (parts[0] === 'group') { r.group_id = Number(parts[1]); }
          setPath(doc, path, r);
        } else if (kind === 'pipeline-status') {
          var ps = String(v).split(':');
          setPath(doc, path + '.pipeline_id', ps[0] ? Number(ps[0]) : null);
          setPath(doc, path + '.status_id', ps[1] ? Number(ps[1]) : null);
        } else {
          setPath(doc, path, v);
        }
      });
      $section.find('[data-fields]').each(function () {
        setPath(doc, $(this).attr('data-fields'), readFields($(this)));
      });
      delete doc.id;
      return doc;
    }

    // --- the whole settings view ----------------------------------------------------------------------------
    function currentScenario() {
      for (var i = 0; i < ui.scenarios.length; i++) {
        if (String(ui.scenarios[i].id) === String(ui.tab)) { return ui.scenarios[i]; }
      }
      return null;
    }

    function render() {
      if (!ui.state || ui.state.status !== 'active') { renderOff(); return; }
      var html = '<nav class="vpbx-tabs"><button type="button" data-action="tab" data-tab="main"' +
        (ui.tab === 'main' ? ' class="vpbx-current"' : '') + '>' + esc(t('main_title')) + '</button>';
      ui.scenarios.forEach(function (sc) {
        html += '<button type="button" data-action="tab" data-tab="' + sc.id + '"' +
          (String(ui.tab) === String(sc.id) ? ' class="vpbx-current"' : '') + '>' + esc(sc.name) + '</button>';
      });
      html += '</nav>';
      var sc = currentScenario();
      html += sc ? renderScenario(sc) : renderMain();
      ui.$root.html(html);
      if (readOnly()) { ui.$root.find('input, select').prop('disabled', true); }
    }

    async function load() {
      try {
        ui.state = await api('GET', '/state');
      } catch (e) {
        ui.state = null;
      }
      if (ui.state && ui.state.status === 'active') {
        try {
          var got = await Promise.all([api('GET', '/directory'), api('GET', '/mapping'), api('GET', '/scenarios')]);
          ui.directory = got[0];
          ui.mapping = got[1];
          ui.scenarios = got[2].items;
        } catch (e) {
          ui.directory = ui.directory || { amo_users: [], extensions: [], lines: [], groups: [] };
          ui.mapping = ui.mapping || { items: [], fallback_user_id: null };
        }
        try { ui.meta = await api('GET', '/amo-meta'); } catch (e) { ui.meta = ui.meta || null; }
      }
      if (ui.tab !== 'main' && !currentScenario()) { ui.tab = 'main'; }
      render();
    }

    async function reloadScenarios() {
      ui.scenarios = (await api('GET', '/scenarios')).items;
      render();
    }

    function bind($root) {
      $root.on('click', '[data-action]', async function (ev) {
        ev.preventDefault();
        var $el = $(this);
        var action = $el.attr('data-action');
        var id = $el.closest('[data-scenario]').attr('data-scenario');
        try {
          if (action === 'tab') {
            ui.tab = $el.attr('data-tab');
            render();
          } else if (action === 'connect') {
            var ticket = await api('POST', '/connect-ticket', {});
            window.open(ticket.url, '_blank');
          } else if (action === 'create') {
            if (ui.state && ui.state.order_url) { window.open(ui.state.order_url, '_blank'); }
          } else if (action === 'disconnect') {
            if (window.confirm(t('disconnect_confirm'))) {
              await api('POST', '/disconnect', {});
              await load();
            }
          } else if (action === 'add-scenario') {
            await api('POST', '/scenarios', {});
            await reloadScenarios();
          } else if (action === 'copy-scenario') {
            await api('POST', '/scenarios', { copy_from: Number(id) });
            await reloadScenarios();
          } else if (action === 'delete-scenario') {
            if (window.confirm(t('delete_confirm'))) {
              await api('DELETE', '/scenarios/' + id);
              await reloadScenarios();
            }
          } else if (action === 'save-mapping') {
            var body = collectMapping();
            var problem = mappingProblem(body);
            if (problem) { message('mapping', problem, true); return; }
            ui.mapping = await api('PUT', '/mapping', body);
            render();
            message('mapping', t('saved'));
          } else if (action === 'event-tab' || action === 'kind-tab') {
            var sc = currentScenario();
            var doc = collectScenario(sc);
            Object.assign(sc, doc);
            if (action === 'event-tab') { ui.direction = $el.attr('data-direction'); }
            if (action === 'kind-tab') { ui.kind = $el.attr('data-kind-tab'); }
            render();
          } else if (action === 'remove-line' || action === 'add-line' || action === 'add-exclusion' ||
                     action === 'remove-exclusion') {
            var cur = currentScenario();
            Object.assign(cur, collectScenario(cur));
            cur.smart_routing = cur.smart_routing || { enabled: false, excluded_user_ids: [] };
            if (action === 'remove-line') {
              var line = $el.closest('[data-line]').attr('data-line');
              cur.lines = cur.lines.filter(function (l) { return l !== line; });
            } else if (action === 'add-line') {
              var add = ui.$root.find('select[data-field="new-line"]').val();
              if (add) { cur.lines.push(String(add)); }
            } else if (action === 'add-exclusion') {
              var ex = ui.$root.find('select[data-field="new-exclusion"]').val();
              if (ex) { cur.smart_routing.excluded_user_ids.push(Number(ex)); }
            } else {
              var gone = Number($el.closest('[data-excluded]').attr('data-excluded'));
              cur.smart_routing.excluded_user_ids = cur.smart_routing.excluded_user_ids.filter(function (x) {
                return x !== gone;
              });
            }
            render();
          } else if (action === 'add-field' || action === 'remove-field') {
            var edited = currentScenario();
            var $box = $el.closest('[data-fields]');
            if (action === 'remove-field') { $el.closest('[data-role="field-row"]').remove(); }
            Object.assign(edited, collectScenario(edited));
            if (action === 'add-field') {
              var entity = $box.attr('data-entity');
              var list = getPath(edited, $box.attr('data-fields')) || [];
              var used = list.map(function (v) { return v.field_id; });
              var free = metaFields(entity).filter(function (f) { return used.indexOf(f.id) < 0; });
              var pick = free[0] || metaFields(entity)[0];
              list.push(pick.enums && pick.enums.length ? { field_id: pick.id, enum_id: pick.enums[0].id } :
                { field_id: pick.id, value: '' });
              setPath(edited, $box.attr('data-fields'), list);
            }
            render();
          } else if (action === 'save-scenario') {
            var current = currentScenario();
            var unfilled = fieldsProblem();
            if (unfilled) { message('scenario', unfilled, true); return; }
            var saved = await api('PUT', '/scenarios/' + current.id, collectScenario(current));
            Object.assign(current, saved);
            render();
            message('scenario', t('saved'));
          }
        } catch (e) {
          var where = action === 'save-mapping' ? 'mapping' : action === 'save-scenario' ? 'scenario' :
            ui.state && ui.state.status === 'active' ? 'scenarios' : 'off';
          var detail = errorText(e);
          if (e && e.body && e.body.errors) {
            detail += ' ' + e.body.errors.map(function (x) { return x.path + ': ' + x.msg; }).join('; ');
          }
          message(where, detail, true);
        }
      });
      $root.on('change', '[data-role="field-id"]', function () {
        var sc = currentScenario();
        if (sc) { Object.assign(sc, collectScenario(sc)); render(); }
      });
      $root.on('change', 'li[data-scenario] input', async function () {
        var $el = $(this);
        var id = $el.closest('[data-scenario]').attr('data-scenario');
        var patch = {};
        if ($el.attr('data-field') === 'name') { patch.name = String($el.val()).trim(); }
        if ($el.attr('data-field') === 'is_active') { patch.is_active = $el.prop('checked'); }
        try {
          await api('PATCH', '/scenarios/' + id, patch);
          await reloadScenarios();
        } catch (e) {
          await reloadScenarios();
          message('scenarios', errorText(e), true);
        }
      });
    }

    // --- amoCRM's callbacks -------------------------------------------------------------------------------
    this.callbacks = {
      init: function () {
        api('GET', '/state').then(function (state) {
          ui.state = state;
          if (state.status === 'active' && typeof self.add_action === 'function') {
            self.add_action('phone', clickToCall);
          }
          if (state.status === 'active') { popup.stopped = false; openStream(); }
        }).catch(function () { ui.state = null; });
        return true;
      },
      render: function () { return true; },
      bind_actions: function () { return true; },
      settings: function ($modal) {
        var $host = $modal && $modal.length ? $modal : $('#vpbx-widget-settings');
        ui.$root = $('<div class="vpbx-settings"></div>');
        $host.append(ui.$root);
        ui.direction = 'incoming';
        ui.kind = 'new';
        bind(ui.$root);
        load();
        return true;
      },
      onSave: function () { return true; },
      destroy: function () {
        closeStream();
        if (ui.$root) { ui.$root.off().remove(); ui.$root = null; }
      }
    };
    return this;
  };
});
