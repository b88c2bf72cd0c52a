// Drive an EWS endpoint with ews-javascript-api (the EWS Managed API's JavaScript port), as its users do.
//
// Run by tests/lab/test_ews_foreign_client.py, which starts the lab and reads this script's stdout:
// one JSON object per line. {"want": "deliver", "subject": S, "once": null | "stream-open"} asks the test to
// deliver a message with that subject to the mailbox (once a notification stream is open, if so asked) and
// answer "delivered" on stdin; the last line is {"result": {...}} with what the client saw, or {"error": "..."}.
//
// Environment: EWS_URL, EWS_USERNAME, EWS_PASSWORD, EWS_AUTH (basic | ntlm), EWS_MAILBOX, EWS_TAG (the
// subject tag of the seeded messages), NODE_EXTRA_CA_CERTS (the lab CA; certificates are verified).
"use strict";

const readline = require("readline");
const ews = require("ews-javascript-api");
const { XhrApi } = require("@ewsjs/xhr");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const stdin = readline.createInterface({ input: process.stdin });
const answers = [];
const waiting = [];
stdin.on("line", (line) => (waiting.length ? waiting.shift()(line) : answers.push(line)));
const nextAnswer = () => new Promise((resolve) => (answers.length ? resolve(answers.shift()) : waiting.push(resolve)));

const say = (message) => process.stdout.write(JSON.stringify(message) + "\n");

async function deliver(subject, once = null) {
  say({ want: "deliver", subject, once });
  const answer = await nextAnswer();
  if (answer !== "delivered") throw new Error(`the test answered ${answer}`);
}

function within(seconds, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${seconds} s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Credentials that add no Authorization header: with NTLM, only the NTLM handshake can authenticate.
class NoHeaderCredentials extends ews.ExchangeCredentials {
  PrepareWebRequest() {}
}

function connect() {
  const service = new ews.ExchangeService(ews.ExchangeVersion.Exchange2013_SP1);
  service.Url = new ews.Uri(env("EWS_URL"));
  if (env("EWS_AUTH") === "ntlm") {
    service.XHRApi = new XhrApi({ rejectUnauthorized: true }).useNtlmAuthentication(
      env("EWS_USERNAME"), env("EWS_PASSWORD"));
    service.Credentials = new NoHeaderCredentials();
  } else {
    service.XHRApi = new XhrApi({ rejectUnauthorized: true });
    service.Credentials = new ews.WebCredentials(env("EWS_USERNAME"), env("EWS_PASSWORD"));
  }
  return service;
}

async function bindInbox(service) {
  const inbox = await ews.Folder.Bind(service, ews.WellKnownFolderName.Inbox);
  return { id: inbox.Id.UniqueId, displayName: inbox.DisplayName, totalCount: inbox.TotalCount,
           unreadCount: inbox.UnreadCount, childFolderCount: inbox.ChildFolderCount };
}

async function findPaged(service, tag, pageSize) {
  const filter = new ews.SearchFilter.ContainsSubstring(ews.ItemSchema.Subject, tag);
  const pages = [];
  let offset = 0;
  for (;;) {
    const view = new ews.ItemView(pageSize, offset);
    view.OrderBy.Add(ews.ItemSchema.DateTimeReceived, ews.SortDirection.Ascending);
    const found = await service.FindItems(ews.WellKnownFolderName.Inbox, filter, view);
    pages.push({ totalCount: found.TotalCount, moreAvailable: found.MoreAvailable,
                 items: found.Items.map((i) => ({ id: i.Id.UniqueId, subject: i.Subject,
                                                  received: i.DateTimeReceived.ToISOString() })) });
    if (!found.MoreAvailable) return pages;
    offset = found.NextPageOffset;
  }
}

const mailbox = (m) => (m ? { name: m.Name, address: m.Address, routingType: m.RoutingType } : null);

async function loadProperties(service, id) {
  const props = new ews.PropertySet(ews.BasePropertySet.FirstClassProperties, [ews.ItemSchema.MimeContent]);
  const message = await ews.EmailMessage.Bind(service, new ews.ItemId(id), props);
  return {
    subject: message.Subject, internetMessageId: message.InternetMessageId,
    toRecipients: message.ToRecipients.GetEnumerator().map(mailbox), from: mailbox(message.From),
    sender: mailbox(message.Sender), dateTimeSent: message.DateTimeSent.ToISOString(),
    dateTimeCreated: message.DateTimeCreated.ToISOString(), bodyType: ews.BodyType[message.Body.BodyType],
    body: message.Body.Text, mimeCharacterSet: message.MimeContent.CharacterSet,
    conversationId: message.ConversationId ? message.ConversationId.UniqueId : null,
    importance: ews.Importance[message.Importance], isRead: message.IsRead,
    isDeliveryReceiptRequested: message.IsDeliveryReceiptRequested,
    isReadReceiptRequested: message.IsReadReceiptRequested,
    allowedResponseActions: message.AllowedResponseActions,
    headers: message.InternetMessageHeaders.GetEnumerator().map((h) => h.Name),
  };
}

async function findFolders(service) {
  const found = await service.FindFolders(ews.WellKnownFolderName.MsgFolderRoot, new ews.FolderView(100));
  return found.Folders.map((f) => ({ displayName: f.DisplayName, folderClass: f.FolderClass,
                                    totalCount: f.TotalCount }));
}

async function convertIds(service, id, address) {
  const formats = ["EntryId", "HexEntryId", "EwsLegacyId"];
  const converted = {};
  for (const format of formats) {
    const alternate = await service.ConvertId(new ews.AlternateId(ews.IdFormat.EwsId, id, address),
                                              ews.IdFormat[format]);
    const back = await service.ConvertId(new ews.AlternateId(ews.IdFormat[format], alternate.UniqueId, address),
                                         ews.IdFormat.EwsId);
    converted[format] = { id: alternate.UniqueId, mailbox: alternate.Mailbox,
                          format: ews.IdFormat[alternate.Format], back: back.UniqueId };
  }
  return converted;
}

async function pullNotifications(service, inboxId, tag) {
  const subscription = await service.SubscribeToPullNotifications(
    [new ews.FolderId(inboxId)], 5, null, ews.EventType.NewMail);
  await deliver(`pull ${tag}`);
  const results = await subscription.GetEvents();
  const events = results.ItemEvents.map((e) => ({ type: ews.EventType[e.EventType], itemId: e.ItemId.UniqueId }));
  await subscription.Unsubscribe();
  let afterUnsubscribe = null;
  try {
    await subscription.GetEvents();
  } catch (error) {
    afterUnsubscribe = ews.ServiceError[error.ErrorCode] || String(error.message);
  }
  return { events, afterUnsubscribe };
}

async function streamingNotifications(service, inboxId, tag) {
  const subscription = await service.SubscribeToStreamingNotifications(
    [new ews.FolderId(inboxId)], ews.EventType.NewMail);
  const connection = new ews.StreamingSubscriptionConnection(service, 1);
  connection.AddSubscription(subscription);
  const events = [];
  const arrived = new Promise((resolve, reject) => {
    connection.OnNotificationEvent.push((_sender, args) => {
      for (const e of args.Events) events.push({ type: ews.EventType[e.EventType], itemId: e.ItemId.UniqueId });
      if (events.length) resolve();
    });
    connection.OnSubscriptionError.push((_sender, args) => reject(args.Exception || new Error("subscription error")));
  });
  connection.Open();
  await deliver(`streaming ${tag}`, "stream-open");
  await within(20, "a NewMail notification on the stream", arrived);
  connection.Close();
  await subscription.Unsubscribe();
  return { events };
}

async function moveAndDelete(service, pages) {
  const [first, second] = pages[0].items;
  const moved = await service.MoveItems([new ews.ItemId(first.id)], new ews.FolderId(ews.WellKnownFolderName.DeletedItems), true);
  const movedId = moved.Responses[0].Item ? moved.Responses[0].Item.Id.UniqueId : null;
  const message = await ews.EmailMessage.Bind(service, new ews.ItemId(second.id), ews.PropertySet.IdOnly);
  await message.Delete(ews.DeleteMode.HardDelete);
  let deletedLookup = null;
  try {
    await ews.EmailMessage.Bind(service, new ews.ItemId(second.id), ews.PropertySet.IdOnly);
  } catch (error) {
    deletedLookup = ews.ServiceError[error.ErrorCode] || String(error.message);
  }
  return { movedFrom: first.id, movedTo: movedId, hardDeleted: second.id, deletedLookup };
}

async function main() {
  const service = connect();
  const tag = env("EWS_TAG");
  const result = { auth: env("EWS_AUTH") };
  result.inbox = await bindInbox(service);
  result.pages = await findPaged(service, tag, 2);
  result.loaded = await loadProperties(service, result.pages[0].items[0].id);
  result.folders = await findFolders(service);
  result.converted = await convertIds(service, result.pages[0].items[0].id, env("EWS_MAILBOX"));
  result.pull = await pullNotifications(service, result.inbox.id, tag);
  result.streaming = await streamingNotifications(service, result.inbox.id, tag);
  result.moved = await moveAndDelete(service, result.pages);
  say({ result });
}

main().then(
  () => process.exit(0),
  (error) => {
    say({ error: String((error && (error.stack || error.message)) || error) });
    process.exit(1);
  },
);
