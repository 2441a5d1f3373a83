// The Qt SCXML 6.4 driver of the differential harness: the same job protocol as
// ../scion.js. Jobs on stdin, one JSON object per line: {"id", "doc", "events"}; one
// JSON line per job on stdout: {"id", "steps": [{"logs", "config", "done"}]} or
// {"id", "error"}. Documents are loaded at run time (QScxmlStateMachine::fromData), so
// their ECMAScript datamodel runs on Qt's QJSEngine.
//
// Build: g++ -std=c++17 -fPIC driver.cpp -o qt-driver $(pkg-config --cflags --libs Qt6Scxml Qt6Core)
#include <QBuffer>
#include <QCoreApplication>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QScxmlStateMachine>
#include <QStringList>
#include <cstdio>
#include <iostream>
#include <string>

// Qt runs a machine's macrosteps from its event loop: drain it until nothing is left.
static void settle() {
    for (int i = 0; i < 8; ++i)
        QCoreApplication::processEvents(QEventLoop::AllEvents);
}

static QJsonObject run(const QJsonObject &job) {
    QJsonObject out;
    out["id"] = job["id"];
    QByteArray text = job["doc"].toString().toUtf8();
    QBuffer buffer(&text);
    buffer.open(QIODevice::ReadOnly);
    QScxmlStateMachine *sm = QScxmlStateMachine::fromData(&buffer, QStringLiteral("job.scxml"));
    if (!sm->parseErrors().isEmpty()) {
        QStringList errors;
        for (const auto &e : sm->parseErrors())
            errors << e.toString();
        out["error"] = errors.join("; ");
        delete sm;
        return out;
    }
    QStringList logs;
    bool finished = false;
    QObject::connect(sm, &QScxmlStateMachine::log,
                     [&](const QString &, const QString &msg) { logs << msg; });
    QObject::connect(sm, &QScxmlStateMachine::finished, [&]() { finished = true; });
    QJsonArray steps;
    auto record = [&]() {
        QJsonObject step;
        step["logs"] = QJsonArray::fromStringList(logs);
        QStringList config;
        if (!finished) {
            config = sm->activeStateNames(true);
            config.sort();
        }
        step["config"] = QJsonArray::fromStringList(config);
        step["done"] = finished;
        steps.append(step);
        logs.clear();
    };
    sm->start();
    settle();
    record();
    for (const auto &e : job["events"].toArray()) {
        if (finished)
            break;
        sm->submitEvent(e.toString());
        settle();
        record();
    }
    out["steps"] = steps;
    delete sm;
    return out;
}

int main(int argc, char **argv) {
    QCoreApplication app(argc, argv);
    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.empty())
            continue;
        QJsonParseError err;
        QJsonDocument job = QJsonDocument::fromJson(QByteArray::fromStdString(line), &err);
        QJsonObject out;
        if (err.error != QJsonParseError::NoError)
            out["error"] = err.errorString();
        else
            out = run(job.object());
        std::string reply = QJsonDocument(out).toJson(QJsonDocument::Compact).toStdString();
        std::fwrite(reply.data(), 1, reply.size(), stdout);
        std::fputc('\n', stdout);
        std::fflush(stdout);
    }
    return 0;
}
